"""LoRANetwork: load/save round trip, diffusers-style SDXL aliases, dims from weights, family errors, optimizer
groups, max-norm regularisation, network args."""
import numpy as np
import pytest
from mindspore import Tensor

from library.errors import UserError
from library.models.clip import build_text_encoder
from library.models.configs import get_spec
from library.models.layers import lazy_parameters
from library.models.unet import UNet2DConditionModel
from library.networks import LoRANetwork, dims_from_weights, lora_delta, parse_network_args


def _cells(name):
    spec = get_spec(name)
    with lazy_parameters():
        unet = UNet2DConditionModel(spec.unet)
        encoders = [build_text_encoder(c, with_projection=i == 1) for i, c in enumerate(spec.text_encoders)]
    return spec, unet, encoders


@pytest.fixture(scope="module")
def tiny_sdxl():
    return _cells("tiny-sdxl")


@pytest.fixture(scope="module")
def tiny_sd15():
    return _cells("tiny-sd15")


def _trained(network, seed):
    rng = np.random.default_rng(seed)
    for module in network.modules:
        for param in module.trainable():
            param.set_data(Tensor(rng.standard_normal(param.shape).astype(np.float32)))
    return network


def test_round_trip_and_dims_from_weights(tiny_sdxl):
    spec, unet, encoders = tiny_sdxl
    source = _trained(LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=3, network_alpha=1.5,
                                  conv_dim=2, conv_alpha=0.5, seed=0), 1)
    state = source.state_dict()
    target = LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=3, network_alpha=1.5, conv_dim=2,
                         conv_alpha=0.5, seed=5)
    missing, unexpected = target.load_state_dict(state)
    assert missing == [] and unexpected == []
    for key, value in target.state_dict().items():
        np.testing.assert_array_equal(value, state[key])

    dims, alphas = dims_from_weights(state)
    rebuilt = LoRANetwork(unet, encoders, "sdxl", spec.unet, modules_dim=dims, modules_alpha=alphas)
    assert len(rebuilt) == len(source)
    conv_module = next(m for m in rebuilt.unet_loras if m.lora_name.endswith("_in_layers_2"))
    assert conv_module.rank == 2 and conv_module.alpha == 0.5
    rebuilt.load_state_dict(state)
    assert all(np.array_equal(v, state[k]) for k, v in rebuilt.state_dict().items())


def test_sdxl_file_with_diffusers_style_names_loads(tiny_sdxl):
    spec, unet, encoders = tiny_sdxl
    source = _trained(LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=2, seed=0), 2)
    by_alias = {}
    for module in source.unet_loras:
        alias = "lora_unet_" + module.module_path.replace(".", "_")
        for suffix, value in ((".lora_down.weight", module.down_weight()), (".lora_up.weight", module.up_weight())):
            by_alias[alias + suffix] = value
    target = LoRANetwork(unet, encoders, "sdxl", spec.unet, network_dim=2, seed=9)
    missing, unexpected = target.load_state_dict(by_alias)
    assert unexpected == [] and all(name.startswith("lora_te") for name in missing)
    for ours, theirs in zip(target.unet_loras, source.unet_loras):
        np.testing.assert_array_equal(ours.up_weight(), theirs.up_weight())
        assert ours.alpha == 2.0  # no alpha in the file: alpha = rank (scale 1), as diffusers/A1111


def test_family_and_shape_errors(tiny_sdxl, tiny_sd15):
    spec_xl, unet_xl, enc_xl = tiny_sdxl
    spec_15, unet_15, enc_15 = tiny_sd15
    sdxl_state = LoRANetwork(unet_xl, enc_xl, "sdxl", spec_xl.unet, seed=0).state_dict()
    sd15_net = LoRANetwork(unet_15, enc_15, "sd1", spec_15.unet, seed=0)
    with pytest.raises(UserError, match="LoRA for SDXL.*the model is SD 1.x"):
        sd15_net.load_state_dict(sdxl_state, source="x.safetensors")
    sdxl_net = LoRANetwork(unet_xl, enc_xl, "sdxl", spec_xl.unet, seed=0)
    with pytest.raises(UserError, match="single text encoder.*the model is SDXL"):
        sdxl_net.load_state_dict(sd15_net.state_dict())
    real_sd2 = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
                np.zeros((4, 1024), np.float32)}
    with pytest.raises(UserError, match="LoRA for SD 2.x"):
        sd15_net.load_state_dict(real_sd2)
    bad = sd15_net.state_dict()
    key = next(k for k in bad if k.endswith("lora_down.weight"))
    bad[key] = np.zeros((bad[key].shape[0], 3), np.float32)
    with pytest.raises(UserError, match="shape mismatch.*" + key.split(".")[0]):
        sd15_net.load_state_dict(bad, metadata={"ss_base_model_version": "sd_v2"})
    with pytest.raises(UserError, match="none of its 1 LoRA modules"):
        sd15_net.load_state_dict({"lora_unet_nothing.lora_down.weight": np.zeros((1, 1)),
                                  "lora_unet_nothing.lora_up.weight": np.zeros((1, 1))})


def test_param_groups_follow_kohya(tiny_sd15):
    spec, unet, encoders = tiny_sd15
    net = LoRANetwork(unet, encoders, "sd1", spec.unet, seed=0)
    groups, labels = net.trainable_params(text_encoder_lr=[5e-5, 1e-5], unet_lr=None, default_lr=1e-4)
    assert labels == ["textencoder", "unet"]
    assert [g["lr"] for g in groups] == [5e-5, 1e-4]
    assert len(groups[0]["params"]) == 2 * len(net.text_encoder_loras)
    groups, labels = net.trainable_params(text_encoder_lr=0, unet_lr=2e-4, default_lr=1e-4)
    assert labels == ["unet"]  # lr 0 drops the group
    plus = LoRANetwork(unet, encoders, "sd1", spec.unet, loraplus_unet_lr_ratio=16, seed=0)
    groups, labels = plus.trainable_params(None, 1e-4, 1e-3)
    assert labels == ["textencoder", "unet", "unet plus"]
    assert groups[2]["lr"] == pytest.approx(1.6e-3)
    assert all("lora_up" in p.name or p.name.endswith("weight") for p in groups[2]["params"])
    assert len(groups[1]["params"]) == len(groups[2]["params"]) == len(plus.unet_loras)


def test_max_norm_regularisation(tiny_sd15):
    spec, unet, encoders = tiny_sd15
    net = _trained(LoRANetwork(unet, encoders, "sd1", spec.unet, network_dim=2, network_alpha=1, seed=0), 3)
    norms_before = [np.linalg.norm(lora_delta(m.down_weight(), m.up_weight(), m.scale)) for m in net.modules]
    max_norm = float(np.median(norms_before))
    scaled, mean_norm, largest = net.apply_max_norm_regularization(max_norm)
    norms_after = [np.linalg.norm(lora_delta(m.down_weight(), m.up_weight(), m.scale)) for m in net.modules]
    assert scaled == sum(n > max_norm for n in norms_before)
    assert max(norms_after) == pytest.approx(max_norm, rel=1e-4) and largest == pytest.approx(max_norm, rel=1e-4)
    for before, after in zip(norms_before, norms_after):
        assert after == pytest.approx(min(before, max_norm), rel=1e-4)
    assert mean_norm == pytest.approx(np.mean(norms_after), rel=1e-4)


def test_network_args():
    assert parse_network_args(["conv_dim=4", "rank_dropout=0.1;module_dropout=0.2"]) == {
        "conv_dim": 4, "conv_alpha": 1.0, "rank_dropout": 0.1, "module_dropout": 0.2}
    with pytest.raises(UserError, match="unknown key 'foo'"):
        parse_network_args(["foo=1"])
    with pytest.raises(UserError, match="conv_dim=x: expected an integer"):
        parse_network_args(["conv_dim=x"])
    with pytest.raises(UserError, match="block-wise"):
        parse_network_args(["block_dims=2,2"])



def test_merge_into_base_adds_the_scaled_delta(tmp_path, tiny_sd15):
    """What gen_img's --network_merge relies on: a network built from a file's dims merges W + m*alpha/r*up@down."""
    from types import SimpleNamespace

    from library.formats.lora import read_lora_file, save_lora
    from library.models.weights import state_dict
    from library.networks import create_network_from_weights

    spec, unet, encoders = tiny_sd15
    source = _trained(LoRANetwork(unet, encoders, "sd1", spec.unet, network_dim=2, network_alpha=1.0,
                                  conv_dim=2, seed=0), 4)
    path = tmp_path / "x.safetensors"
    save_lora(path, source.state_dict())
    fresh = SimpleNamespace(spec=spec, unet=UNet2DConditionModel(spec.unet),
                            text_encoders=[build_text_encoder(spec.text_encoders[0])])
    before = {k: v.copy() for k, v in state_dict(fresh.unet).items()}
    tensors, metadata = read_lora_file(path)
    network = create_network_from_weights(fresh, tensors, multiplier=0.5)
    network.load_state_dict(tensors, metadata)
    network.merge_into_base(0.5)
    after = state_dict(fresh.unet)
    module = next(m for m in source.unet_loras if m.lora_name.endswith("resnets_0_conv1"))
    key = module.module_path + ".weight"
    np.testing.assert_allclose(after[key], before[key] + 0.5 * module.delta_weight(), rtol=1e-5, atol=1e-6)
    assert len(network) == len(source) and not any(len(m.target.layer.adapters) for m in network.modules)
