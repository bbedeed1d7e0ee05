"""Datasets' network_multiplier in LoRA training (kohya fef17296): a batch of a dataset with multiplier m trains
with every LoRA output scaled by m, through one shared scalar set per batch without recompiling; nothing
changes when every dataset is 1.0; samples during training use 1.0; textual inversion says it ignores it."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from mindspore import Tensor

import train_network
from library.models.bundle import build_bundle
from library.networks.training import LoRATraining
from library.training import session
from library.training.textual_inversion import warn_network_multipliers


def fake_group(*multipliers):
    return SimpleNamespace(datasets=[SimpleNamespace(params=SimpleNamespace(source=f"datasets[{i}]",
                                                                           network_multiplier=m))
                                     for i, m in enumerate(multipliers)])


def lora_method(group):
    parser = session.build_parser("test", True, train_network.add_network_arguments)
    args = parser.parse_args(["--network_train_text_encoder_only", "--network_dim", "4", "--network_alpha", "2",
                              "--seed", "1"])
    method = LoRATraining(args, build_bundle("tiny-sd15"), dataset_group=group)
    rng = np.random.default_rng(0)
    for module in method.network.modules:  # a trained LoRA (lora_up starts at zero)
        module.lora_up.weight.set_data(Tensor(rng.standard_normal(module.lora_up.weight.shape).astype(np.float32)))
    return method


@pytest.fixture(scope="module")
def method():
    return lora_method(fake_group(0.5, 1.0))


def encode(method, ids):
    return method.bundle.text_encoders[0](ids)[0].asnumpy()


def test_batch_multiplier_scales_every_lora_output_like_kohyas_set_multiplier(method):
    """The compiled encoder (compiled once, at the first call) reads the shared multiplier live: its output at
    batch multiplier m equals the output with kohya's per-module set_multiplier(m)."""
    ids = Tensor(np.array([[49406, 320, 1125, 539, 49407] + [49407] * 72], np.int32))
    network = method.network
    method.before_batch({"network_multipliers": np.array([0.5, 0.5], np.float32)})
    at_half = encode(method, ids)
    method.before_batch({"network_multipliers": np.array([1.0], np.float32)})
    at_one = encode(method, ids)
    network.set_multiplier(0.5)  # kohya's way: every module's multiplier
    reference_half = encode(method, ids)
    network.set_multiplier(1.0)
    method.before_batch({"network_multipliers": np.array([0.0], np.float32)})
    without = encode(method, ids)
    network.set_multiplier(0.0)
    method.before_batch({"network_multipliers": np.array([1.0], np.float32)})
    reference_without = encode(method, ids)
    network.set_multiplier(1.0)
    assert np.abs(at_half - reference_half).max() <= 1e-5 * np.abs(reference_half).max()
    assert np.abs(without - reference_without).max() <= 1e-5 * np.abs(reference_without).max()
    assert np.abs(at_one - at_half).max() > 1e-3 and np.abs(at_half - without).max() > 1e-3


def test_samples_during_training_use_multiplier_one(method):
    seen = []
    sample = method.with_unit_multiplier(lambda **kw: seen.append(float(method.network.batch_multiplier.asnumpy())))
    method.before_batch({"network_multipliers": np.array([0.5], np.float32)})
    sample(step=1, epoch=None)
    assert seen == [1.0]
    assert method.with_unit_multiplier(None) is None


def test_all_datasets_at_one_leave_the_graph_unchanged():
    method = lora_method(fake_group(1.0, 1.0))
    assert method.network.batch_multiplier is None
    assert all(m.batch_multiplier is None for m in method.network.modules)
    sample_fn = object()
    assert method.with_unit_multiplier(sample_fn) is sample_fn
    method.before_batch({"network_multipliers": np.array([1.0], np.float32)})  # nothing to do


def test_textual_inversion_says_it_ignores_network_multiplier(caplog):
    with caplog.at_level(logging.WARNING, logger="sdms.training"):
        warn_network_multipliers(fake_group(1.0))
        assert not caplog.records
        warn_network_multipliers(fake_group(1.0, 0.7))
    assert "network_multiplier is ignored by textual inversion" in caplog.text and "datasets[1]: 0.7" in caplog.text
