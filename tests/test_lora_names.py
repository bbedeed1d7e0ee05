"""kohya's LoRA module names and counts for the real SD1/SD2/SDXL configs (cells built without weights)."""
import numpy as np
import pytest

from library.models.clip import build_text_encoder
from library.models.configs import get_spec
from library.models.layers import lazy_parameters
from library.models.unet import UNet2DConditionModel
from library.networks.naming import text_encoder_targets, unet_targets


def _cells(spec_name):
    spec = get_spec(spec_name)
    with lazy_parameters():
        unet = UNet2DConditionModel(spec.unet)
        encoders = [build_text_encoder(c, with_projection=i == 1) for i, c in enumerate(spec.text_encoders)]
    return spec, unet, encoders


@pytest.fixture(scope="module")
def sd15():
    return _cells("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return _cells("sdxl-base")


def _names(targets):
    return [t.lora_name for t in targets]


def test_sd15_counts_and_names(sd15):
    spec, unet, encoders = sd15
    te = _names(text_encoder_targets(encoders))
    un = _names(unet_targets(unet, spec.unet, ldm_names=False, with_conv=False))
    assert (len(te), len(un)) == (72, 192)
    assert len(set(te + un)) == 264
    for name in ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_text_model_encoder_layers_11_mlp_fc2",
                 "lora_te_text_model_encoder_layers_5_self_attn_out_proj"):
        assert name in te
    for name in ("lora_unet_down_blocks_0_attentions_0_proj_in",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2",
                 "lora_unet_mid_block_attentions_0_proj_in", "lora_unet_up_blocks_3_attentions_2_proj_out"):
        assert name in un
    conv = unet_targets(unet, spec.unet, ldm_names=False, with_conv=True)
    assert len(conv) == 278  # kohya's LoRA-C3Lier count for SD1.x
    conv_names = _names(conv)
    for name in ("lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_downsamplers_0_conv",
                 "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
                 "lora_unet_up_blocks_1_resnets_2_time_emb_proj"):
        assert name in conv_names
    kinds = {t.lora_name: t.is_conv3x3 for t in conv}
    assert kinds["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert not kinds["lora_unet_up_blocks_1_resnets_2_time_emb_proj"]
    assert not kinds["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]


def test_sd21_text_encoder_count():
    spec = get_spec("sd21")
    with lazy_parameters():
        encoder = build_text_encoder(spec.text_encoders[0])
    assert len(text_encoder_targets([encoder])) == 138


def test_sdxl_counts_and_ldm_names(sdxl):
    spec, unet, encoders = sdxl
    te = _names(text_encoder_targets(encoders))
    assert sum(n.startswith("lora_te1_") for n in te) == 72
    assert sum(n.startswith("lora_te2_") for n in te) == 192
    targets = unet_targets(unet, spec.unet, ldm_names=True, with_conv=False)
    un = _names(targets)
    assert len(un) == 722 and len(set(un)) == 722
    for name in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k",
                 "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", "lora_unet_output_blocks_0_1_proj_in",
                 "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"):
        assert name in un + te
    aliases = {t.alias: t.lora_name for t in targets}
    assert aliases["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k"] == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k"
    conv = _names(unet_targets(unet, spec.unet, ldm_names=True, with_conv=True))
    assert len(conv) == 788  # kohya's count with conv_dim for SDXL
    for name in ("lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_1_0_out_layers_3",
                 "lora_unet_input_blocks_1_0_emb_layers_1", "lora_unet_input_blocks_4_0_skip_connection",
                 "lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv"):
        assert name in conv


def test_network_on_tiny_models_builds_named_modules():
    from library.networks.network import LoRANetwork

    spec = get_spec("tiny-sdxl")
    unet = UNet2DConditionModel(spec.unet)
    encoders = [build_text_encoder(c, with_projection=i == 1) for i, c in enumerate(spec.text_encoders)]
    net = LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=2, network_alpha=1, seed=0)
    tiny_transformer_modules = len(unet_targets(unet, spec.unet, True, False))
    assert len(net.unet_loras) == tiny_transformer_modules and len(net.text_encoder_loras) > 0
    state = net.state_dict()
    assert len(state) == 3 * len(net)
    assert all(state[k].shape == () for k in state if k.endswith(".alpha"))
    assert all(k.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks",
                             "lora_te1_", "lora_te2_")) for k in state)
    assert not any(state[k].any() for k in state if k.endswith("lora_up.weight"))
    only_unet = LoRANetwork(unet, encoders, "sdxl", spec.unet, train_text_encoder=False, seed=0)
    assert only_unet.text_encoder_loras == [] and len(only_unet.unet_loras) == len(net.unet_loras)
    again = LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=2, network_alpha=1, seed=0)
    np.testing.assert_array_equal(again.unet_loras[3].down_weight(), net.unet_loras[3].down_weight())
