"""Named model specs: diffusers/transformers accept the dicts, and the structure matches each family."""
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.errors import UserError
from library.models.configs import SPEC_NAMES, get_spec


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_all_names_resolve_with_consistent_fields():
    expected = {"sd15": ("sd1", "epsilon", 0.18215, 512), "sd21": ("sd2", "epsilon", 0.18215, 512),
                "sd21-v": ("sd2", "v_prediction", 0.18215, 768), "sdxl-base": ("sdxl", "epsilon", 0.13025, 1024)}
    for name in SPEC_NAMES:
        spec = get_spec(name)
        assert spec.name == name
        full = expected[{"tiny-sdxl": "sdxl-base"}.get(name, name.replace("tiny-", ""))]
        assert (spec.family, spec.prediction_type, spec.vae_scaling_factor) == full[:3]
        if not name.startswith("tiny"):
            assert spec.resolution == full[3]
        # the VAE downsamples by 8 and the UNet's default latent matches the default resolution
        assert 2 ** (len(spec.vae["block_out_channels"]) - 1) == 8
        assert spec.sample_size * 8 == spec.resolution
        assert spec.context_dim == sum(te["hidden_size"] for te in spec.text_encoders)
        assert len(spec.text_encoders) == (2 if spec.family == "sdxl" else 1)
        if spec.family == "sdxl":
            pooled = spec.text_encoders[1]["projection_dim"]
            assert spec.unet["projection_class_embeddings_input_dim"] == pooled + 6 * 256
            assert spec.text_encoders[0]["hidden_size"] != spec.text_encoders[1]["hidden_size"]
        assert spec.unet["use_linear_projection"] == (spec.family != "sd1")


def test_get_spec_returns_independent_copies_and_rejects_unknown_names():
    a = get_spec("tiny-sd15")
    a.unet["block_out_channels"][0] = 999
    assert get_spec("tiny-sd15").unet["block_out_channels"][0] == 32
    with pytest.raises(UserError, match="sd15"):
        get_spec("sd3")


def test_full_size_configs_give_the_published_parameter_counts():
    # published sizes: SD1.5 UNet 859.52M, SDXL base UNet 2.567B, VAE 83.65M, CLIP-L 123.06M, bigG 694.66M
    with torch.device("meta"):
        sd15 = get_spec("sd15")
        assert _count(UNet2DConditionModel(**sd15.unet)) == 859_520_964
        assert _count(AutoencoderKL(**sd15.vae)) == 83_653_863
        assert _count(CLIPTextModel(CLIPTextConfig(**sd15.text_encoders[0]))) == 123_060_480
        sdxl = get_spec("sdxl-base")
        assert _count(UNet2DConditionModel(**sdxl.unet)) == 2_567_463_684
        assert _count(CLIPTextModelWithProjection(CLIPTextConfig(**sdxl.text_encoders[1]))) == 694_659_840


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def test_tiny_specs_build_small_diffusers_models(name):
    spec = get_spec(name)
    unet = UNet2DConditionModel(**spec.unet)
    vae = AutoencoderKL(**spec.vae)
    assert _count(unet) < 5_000_000 and _count(vae) < 500_000
    has_attention = [hasattr(block, "attentions") for block in unet.down_blocks]
    assert True in has_attention and False in has_attention
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, spec.resolution, spec.resolution)).latent_dist.mean
    assert tuple(z.shape) == (1, 4, spec.sample_size, spec.sample_size)
