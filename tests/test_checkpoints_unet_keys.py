"""UNet key mapping LDM <-> diffusers: known SD1/SDXL facts, module paths, and diffusers' own converter."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from library.checkpoints.unet_keys import diffusers_to_ldm_unet_key, ldm_to_diffusers_unet_key
from library.errors import UserError

SD1_LIKE = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
SDXL_LIKE = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, attention_head_dim=(2, 4, 4), norm_num_groups=8, use_linear_projection=True,
    transformer_layers_per_block=(1, 2, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80)
ONE_LAYER_TWO_LEVELS = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)


@pytest.mark.parametrize("diffusers_name, ldm_name", [
    ("conv_in.weight", "input_blocks.0.0.weight"),
    ("time_embedding.linear_2.bias", "time_embed.2.bias"),
    ("down_blocks.0.resnets.1.conv1.weight", "input_blocks.2.0.in_layers.2.weight"),
    ("down_blocks.1.attentions.0.proj_in", "input_blocks.4.1.proj_in"),
    ("down_blocks.2.downsamplers.0.conv.weight", "input_blocks.9.0.op.weight"),
    ("down_blocks.3.resnets.1", "input_blocks.11.0"),
    ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "middle_block.1.transformer_blocks.0.attn2.to_k"),
    ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
    ("up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias"),
    ("up_blocks.3.attentions.2.proj_out", "output_blocks.11.1.proj_out"),
    ("up_blocks.1.resnets.0.conv_shortcut.weight", "output_blocks.3.0.skip_connection.weight"),
    ("conv_norm_out.weight", "out.0.weight"),
])
def test_sd1_layout_facts(diffusers_name, ldm_name):
    assert diffusers_to_ldm_unet_key(diffusers_name, SD1_LIKE) == ldm_name
    assert ldm_to_diffusers_unet_key(ldm_name, SD1_LIKE) == diffusers_name


@pytest.mark.parametrize("diffusers_name, ldm_name", [
    ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.attentions.1.transformer_blocks.1.ff.net.0.proj",
     "input_blocks.5.1.transformer_blocks.1.ff.net.0.proj"),
    ("down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
    ("down_blocks.2.resnets.0.norm1.bias", "input_blocks.7.0.in_layers.0.bias"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"),
    ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
    ("up_blocks.1.attentions.2.proj_in", "output_blocks.5.1.proj_in"),
    ("up_blocks.2.resnets.2.conv2.weight", "output_blocks.8.0.out_layers.3.weight"),
])
def test_sdxl_layout_facts(diffusers_name, ldm_name):
    assert diffusers_to_ldm_unet_key(diffusers_name, SDXL_LIKE) == ldm_name
    assert ldm_to_diffusers_unet_key(ldm_name, SDXL_LIKE) == diffusers_name


@pytest.mark.parametrize("config", [SD1_LIKE, SDXL_LIKE, ONE_LAYER_TWO_LEVELS], ids=["sd1", "sdxl", "odd"])
def test_every_parameter_round_trips_and_diffusers_reads_our_names(config):
    model = UNet2DConditionModel(**config)
    tensors = model.state_dict()
    full_config = dict(model.config)
    ldm = {}
    for name, value in tensors.items():
        ldm_name = diffusers_to_ldm_unet_key(name, full_config)
        assert ldm_to_diffusers_unet_key(ldm_name, full_config) == name
        module = name.rsplit(".", 1)[0]
        assert ldm_to_diffusers_unet_key(diffusers_to_ldm_unet_key(module, full_config), full_config) == module
        ldm["model.diffusion_model." + ldm_name] = value
    assert len(ldm) == len(tensors)
    converted = convert_ldm_unet_checkpoint(ldm, full_config)
    assert set(converted) == set(tensors)
    for name, value in tensors.items():
        assert torch.equal(converted[name], value), name


def test_unknown_keys_are_reported():
    with pytest.raises(UserError, match="down_blocks.7.resnets.0"):
        diffusers_to_ldm_unet_key("down_blocks.7.resnets.0.conv1.weight", SD1_LIKE)
    with pytest.raises(UserError, match="input_blocks.12.0"):
        ldm_to_diffusers_unet_key("input_blocks.12.0.in_layers.0.weight", SD1_LIKE)
