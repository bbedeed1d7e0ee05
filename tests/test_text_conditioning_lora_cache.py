"""Compiled text conditioners are keyed on the encoders' structure: a LoRA applied or removed after a first
encode is always seen (no stale graph), and unchanged encoders reuse the compiled conditioner."""
import numpy as np
from mindspore import Tensor

from library.models.bundle import ModelBundle, build_text_encoders, graph_structure_key
from library.models.configs import get_spec
from library.models.text_conditioning import TextConditioner, cached_conditioner, encode_prompts
from library.networks import LoRANetwork
from library.networks.lora import write_param


def _text_bundle(name):
    """Only the text side: the UNet and VAE play no part here."""
    spec = get_spec(name)
    return ModelBundle(spec=spec, unet=None, vae=None, text_encoders=build_text_encoders(spec))


def _ids(batch=2):
    ids = np.full((batch, 77), 49407, np.int32)
    ids[:, 0] = 49406
    ids[:, 1:4] = [[320, 1125, 539], [2368, 5988, 267]][:batch]
    return ids


def _text_encoder_lora(bundle, seed=0):
    """A text-encoder-only LoRA with non-zero up weights (kohya initialises them to zero: no effect)."""
    network = LoRANetwork(None, bundle.text_encoders, bundle.spec.family, None, network_dim=2, network_alpha=2,
                          train_unet=False, seed=seed)
    rng = np.random.default_rng(seed)
    for module in network.modules:
        write_param(module.lora_up.weight, 0.5 * rng.standard_normal(module.lora_up.weight.shape))
    return network


def _fresh(bundle, ids):
    """Output of a conditioner built now (compiled now) for the encoders as they are."""
    context, _ = TextConditioner(bundle.text_encoders, bundle.spec.family)(Tensor(ids))
    return context.asnumpy()


def test_lora_applied_after_a_first_encode_is_seen_and_removal_restores():
    bundle = _text_bundle("tiny-sd15")
    ids = _ids()
    before = encode_prompts(bundle, [ids])[0].asnumpy()
    network = _text_encoder_lora(bundle).apply()
    with_lora = encode_prompts(bundle, [ids])[0].asnumpy()
    assert np.abs(with_lora - before).max() > 1e-3  # the LoRA changes the context
    np.testing.assert_allclose(with_lora, _fresh(bundle, ids), rtol=0, atol=1e-6)
    network.remove()
    after = encode_prompts(bundle, [ids])[0].asnumpy()
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


def test_structure_key_follows_adapters_and_the_cache_reuses_unchanged_encoders():
    bundle = _text_bundle("tiny-sd15")
    encoder = bundle.text_encoders[0]
    plain = graph_structure_key(encoder)
    assert graph_structure_key(encoder) == plain
    first = cached_conditioner(bundle.text_encoders, "sd1")
    assert cached_conditioner(bundle.text_encoders, "sd1") is first

    network_a = _text_encoder_lora(bundle, seed=2).apply()
    with_a = graph_structure_key(encoder)
    assert with_a != plain
    assert cached_conditioner(bundle.text_encoders, "sd1") is not first
    network_a.remove()
    assert graph_structure_key(encoder) == plain
    assert cached_conditioner(bundle.text_encoders, "sd1") is first

    # Same layout, other adapter objects: a different structure (the graph would hold the old modules).
    _text_encoder_lora(bundle, seed=3).apply()
    assert graph_structure_key(encoder) not in (plain, with_a)
