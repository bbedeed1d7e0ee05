"""LoRAModule math: identity at init, equals merged weights W + m*alpha/r*up@down, multipliers, dropouts."""
import numpy as np
import pytest
import torch
from mindspore import Tensor

from library.models.layers import Conv2d, Linear
from library.networks.lora import LoRAModule, lora_delta
from library.networks.network import invalidate_compiled_graphs


def _attach(layer, module):
    layer.adapters.append(module)
    invalidate_compiled_graphs([layer])


def _randomise_up(module, rng):
    shape = module.lora_up.weight.shape
    module.lora_up.weight.set_data(Tensor(rng.standard_normal(shape).astype(np.float32)))


def _torch_reference(layer_kind, weight, bias, x, stride=1, padding=0):
    w, b, xt = (torch.from_numpy(a) for a in (weight, bias, x))
    if layer_kind == "linear":
        return torch.nn.functional.linear(xt, w, b).numpy()
    return torch.nn.functional.conv2d(xt, w, b, stride=stride, padding=padding).numpy()


CASES = [
    ("linear", lambda: Linear(12, 10), (2, 5, 12), {}),
    ("conv1x1", lambda: Conv2d(6, 8, 1), (2, 6, 5, 5), {}),
    ("conv3x3", lambda: Conv2d(6, 8, 3, padding=1), (2, 6, 6, 6), {"padding": 1}),
    ("conv3x3_stride2", lambda: Conv2d(6, 8, 3, stride=2, padding=1), (2, 6, 8, 8), {"stride": 2, "padding": 1}),
]


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("name,make,x_shape,conv_kwargs", CASES, ids=[c[0] for c in CASES])
def test_identity_at_init_then_equals_merged_weight(name, make, x_shape, conv_kwargs):
    rng = np.random.default_rng(0)
    layer = make()
    x = rng.standard_normal(x_shape).astype(np.float32)
    base = layer(Tensor(x)).asnumpy()

    module = LoRAModule("lora_test", layer, rank=3, alpha=2.0, multiplier=0.7, rng=np.random.RandomState(1))
    assert not module.up_weight().any(), "lora_up must start at zero"
    _attach(layer, module)
    np.testing.assert_array_equal(layer(Tensor(x)).asnumpy(), base)

    _randomise_up(module, rng)
    invalidate_compiled_graphs([layer])
    with_lora = layer(Tensor(x)).asnumpy()
    weight, bias = layer.weight.asnumpy(), layer.bias.asnumpy()
    up, down = module.up_weight(), module.down_weight()
    merged = weight + 0.7 * (2.0 / 3) * np.einsum("or,r...->o...", up.reshape(up.shape[0], -1), down)
    kind = "linear" if name == "linear" else "conv"
    reference = _torch_reference(kind, merged, bias, x, **conv_kwargs)
    assert _rel(with_lora, reference) <= 1e-5
    assert _rel(with_lora, base) > 1e-3, "a non-zero lora_up must change the output"

    # merge_into_base bakes the same delta into the layer itself
    del layer.adapters[0]
    module.merge_into_base()
    invalidate_compiled_graphs([layer])
    np.testing.assert_allclose(layer.weight.asnumpy(), merged, rtol=1e-5, atol=1e-6)
    assert _rel(layer(Tensor(x)).asnumpy(), reference) <= 1e-5


def test_kohya_init_and_shapes():
    conv = Conv2d(16, 8, 3, stride=2, padding=1)
    module = LoRAModule("c", conv, rank=4, alpha=None, rng=np.random.RandomState(0))
    assert module.down_weight().shape == (4, 16, 3, 3)
    assert module.up_weight().shape == (8, 4, 1, 1)
    assert module.alpha == 4.0 and module.scale == 1.0  # alpha None -> rank
    bound = 1 / np.sqrt(16 * 9)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    down = module.down_weight()
    assert np.abs(down).max() <= bound and np.abs(down).max() > 0.8 * bound
    assert LoRAModule("z", Linear(8, 8), rank=2, alpha=0).alpha == 2.0


def test_multiplier_and_alpha_change_without_recompiling():
    rng = np.random.default_rng(3)
    layer = Linear(8, 6)
    module = LoRAModule("m", layer, rank=2, alpha=1.0, multiplier=1.0)
    _randomise_up(module, rng)
    x = Tensor(rng.standard_normal((3, 8)).astype(np.float32))
    base = layer(x).asnumpy()
    _attach(layer, module)
    full = layer(x).asnumpy() - base
    module.set_multiplier(0.25)
    np.testing.assert_allclose(layer(x).asnumpy() - base, 0.25 * full, rtol=1e-4, atol=1e-6)
    module.set_alpha(4.0)  # scale 2 instead of 0.5
    np.testing.assert_allclose(layer(x).asnumpy() - base, 0.25 * 4 * full, rtol=1e-4, atol=1e-5)


def test_module_dropout_only_while_training():
    rng = np.random.default_rng(4)
    layer = Linear(8, 6)
    module = LoRAModule("d", layer, rank=2, alpha=2.0, module_dropout=1.0)
    _randomise_up(module, rng)
    x = Tensor(rng.standard_normal((3, 8)).astype(np.float32))
    base = layer(x).asnumpy()
    _attach(layer, module)
    expected = base + x.asnumpy() @ lora_delta(module.down_weight(), module.up_weight(), 1.0).T
    layer.set_train(False)
    np.testing.assert_allclose(layer(x).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    layer.set_train(True)
    np.testing.assert_allclose(layer(x).asnumpy(), base, rtol=1e-6, atol=1e-6)


def test_rank_dropout_masks_whole_rank_channels_and_rescales():
    rng = np.random.default_rng(5)
    layer = Linear(8, 6, bias=False)
    layer.weight.set_data(Tensor(np.zeros((6, 8), np.float32)))
    module = LoRAModule("r", layer, rank=4, alpha=4.0, rank_dropout=0.5)
    # up = identity on the first 4 outputs, so each output shows one rank channel
    up = np.zeros((6, 4), np.float32)
    up[:4, :4] = np.eye(4)
    module.lora_up.weight.set_data(Tensor(up))
    _attach(layer, module)
    layer.set_train(True)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    out = layer(Tensor(x)).asnumpy()[:, :4]
    h = x @ module.down_weight().T
    kept = np.isclose(out, 2.0 * h, rtol=1e-5, atol=1e-6)
    dropped = np.isclose(out, 0.0, atol=1e-7)
    assert np.all(kept | dropped)
    assert 0.2 < dropped.mean() < 0.8
