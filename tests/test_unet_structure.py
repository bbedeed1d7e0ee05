"""Full-size UNets: same parameter names and shapes as diffusers; config handling and its errors."""
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet

from library.errors import UserError
from library.models.configs import get_spec
from library.models.layers import lazy_parameters
from library.models.resnet import ResnetBlock2D
from library.models.transformer import Transformer2DModel
from library.models.unet import UNet2DConditionModel, resolve_unet_config


def diffusers_shapes(config):
    with torch.device("meta"):  # no memory for 2.6 billion parameters
        model = TorchUNet(**config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("name", ["sd15", "sdxl-base"])
def test_full_size_unet_has_diffusers_parameter_names_and_shapes(name):
    spec = get_spec(name)
    with lazy_parameters():
        ours = UNet2DConditionModel(spec.unet)
    got = {n: tuple(p.shape) for n, p in ours.parameters_and_names()}
    expected = diffusers_shapes(spec.unet)
    assert sorted(set(got) ^ set(expected)) == []
    assert {n: s for n, s in got.items() if s != expected[n]} == {}


def test_gradient_checkpointing_marks_every_resnet_and_transformer():
    with lazy_parameters():
        unet = UNet2DConditionModel(get_spec("tiny-sdxl").unet)
    unet.enable_gradient_checkpointing()
    blocks = [c for _, c in unet.cells_and_names() if isinstance(c, (ResnetBlock2D, Transformer2DModel))]
    assert len(blocks) > 10
    assert all(cell._has_config_recompute for cell in blocks)  # set by Cell.recompute()
    assert not unet.conv_in._has_config_recompute


def test_legacy_attention_head_dim_means_number_of_heads():
    cfg = resolve_unet_config(get_spec("sdxl-base").unet)
    assert cfg["heads_per_level"] == [5, 10, 20]
    cfg = resolve_unet_config(dict(get_spec("sd15").unet, num_attention_heads=4))
    assert cfg["heads_per_level"] == [4, 4, 4, 4]


@pytest.mark.parametrize("key, value", [("class_embed_type", "timestep"), ("resnet_time_scale_shift", "scale_shift"),
                                        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn")])
def test_unsupported_config_values_are_refused_by_name(key, value):
    with pytest.raises(UserError, match=key):
        resolve_unet_config(dict(get_spec("tiny-sd15").unet, **{key: value}))


def test_per_level_lists_must_match_the_level_count():
    with pytest.raises(UserError, match="attention_head_dim|heads"):
        resolve_unet_config(dict(get_spec("sd15").unet, attention_head_dim=[5, 10]))
