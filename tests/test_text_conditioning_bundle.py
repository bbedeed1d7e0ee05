"""ModelBundle construction from named specs, and encode_prompts on a bundle."""
import numpy as np
import pytest

from library.errors import UserError
from library.models.bundle import ModelBundle, build_bundle, build_text_encoders, build_tokenizers
from library.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from library.models.configs import get_spec
from library.models.text_conditioning import encode_prompts
from library.models.unet import UNet2DConditionModel
from library.models.vae import AutoencoderKL


def test_sdxl_bundle_has_both_encoders_and_the_projection():
    bundle = build_bundle("tiny-sdxl", with_tokenizers=False)
    assert isinstance(bundle, ModelBundle) and bundle.family == "sdxl"
    assert isinstance(bundle.unet, UNet2DConditionModel) and isinstance(bundle.vae, AutoencoderKL)
    te1, te2 = bundle.text_encoders
    assert type(te1) is CLIPTextModel and type(te2) is CLIPTextModelWithProjection
    names = {name: tuple(p.shape) for name, p in te2.parameters_and_names()}
    config = bundle.spec.text_encoders[1]
    assert names["text_projection.weight"] == (config["projection_dim"], config["hidden_size"])
    assert names["text_model.embeddings.token_embedding.weight"] == (49408, config["hidden_size"])
    assert f"text_model.encoder.layers.{config['num_hidden_layers'] - 1}.mlp.fc2.bias" in names
    # the context the UNet expects is the two encoders' widths side by side
    assert te1.hidden_size + te2.hidden_size == bundle.spec.context_dim


def test_tokenizers_pad_as_each_family_expects():
    assert [t.pad_token for t in build_tokenizers(get_spec("tiny-sd21"))] == ["!"]
    assert [t.pad_token for t in build_tokenizers(get_spec("tiny-sdxl"))] == ["<|endoftext|>", "!"]


def test_encode_prompts_on_a_bundle_takes_the_family_from_its_spec():
    spec = get_spec("tiny-sd15")
    bundle = ModelBundle(spec=spec, unet=None, vae=None, text_encoders=build_text_encoders(spec))
    ids = np.full((2, 154), 49407, np.int32)
    ids[:, 0] = ids[:, 77] = 49406
    ids[:, 1:4] = [[320, 1125, 539], [2368, 5988, 267]]
    context, pooled = encode_prompts(bundle, [ids], clip_skip=2)
    assert pooled is None
    assert tuple(context.shape) == (2, 152, bundle.spec.context_dim)
    # positions 1..75 come from chunk 1 (different words), 76..151 from chunk 2 (identical, encoded alone)
    values = context.asnumpy()
    assert not np.allclose(values[0, 1:76], values[1, 1:76])
    np.testing.assert_allclose(values[0, 76:], values[1, 76:], rtol=0, atol=1e-6)


def test_spec_with_wrong_encoder_count_is_refused():
    spec = get_spec("tiny-sdxl")
    spec.text_encoders = spec.text_encoders[:1]
    with pytest.raises(UserError, match="2 text encoder"):
        build_text_encoders(spec)
