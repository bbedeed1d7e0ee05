"""AutoencoderKL: names and encode/decode parity with diffusers on a tiny config with the same weights."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from mindspore import Tensor

from library.errors import UserError
from library.models.configs import get_spec
from library.models.layers import lazy_parameters
from library.models.vae import AutoencoderKL, VAEDecode, VAEEncode
from library.models.weights import load_state_dict, state_dict

TINY = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "act_fn": "silu",
}


def _torch_state(module):
    # diffusers' Downsample2D also registers its conv under the legacy alias `Conv2d_0`.
    return {k: v.detach().numpy() for k, v in module.state_dict().items() if "Conv2d_0" not in k}


def _rel_err(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = TorchAutoencoderKL(**TINY).eval()
    # Random (non-default) norm affines so a swapped weight/bias or a wrong eps shows.
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours = AutoencoderKL(TINY)
    load_state_dict(ours, _torch_state(ref))
    return ref, ours


def test_parameter_names_and_shapes_are_diffusers(pair):
    ref, ours = pair
    expected = {k: v.shape for k, v in _torch_state(ref).items()}
    got = {k: v.shape for k, v in state_dict(ours).items()}
    assert got == expected
    assert "encoder.mid_block.attentions.0.to_out.0.weight" in got
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in got
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in got


def test_encode_and_decode_match_diffusers(pair):
    ref, ours = pair
    x = np.random.RandomState(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
        exp_mean, exp_logvar = dist.mean.numpy(), dist.logvar.numpy()
    mean, logvar = VAEEncode(ours)(Tensor(x))
    assert mean.shape == (2, 4, 4, 4)
    assert _rel_err(mean.asnumpy(), exp_mean) <= 1e-4
    assert _rel_err(logvar.asnumpy(), exp_logvar) <= 1e-4

    z = np.random.RandomState(1).randn(2, 4, 4, 4).astype(np.float32)
    with torch.no_grad():
        exp_x = ref.decode(torch.from_numpy(z)).sample.numpy()
    got = VAEDecode(ours)(Tensor(z)).asnumpy()
    assert got.shape == (2, 3, 8, 8)
    assert _rel_err(got, exp_x) <= 1e-4


def test_logvar_is_clamped_like_diffusers():
    one_level = dict(TINY, block_out_channels=[8], down_block_types=["DownEncoderBlock2D"],
                     up_block_types=["UpDecoderBlock2D"])
    vae = AutoencoderKL(one_level)
    params = dict(vae.parameters_and_names())
    params["quant_conv.weight"].set_data(Tensor(np.zeros((8, 8, 1, 1), np.float32)))
    params["quant_conv.bias"].set_data(Tensor(np.array([0, 0, 0, 0, 50, -50, 5, 0], np.float32)))
    _, logvar = VAEEncode(vae)(Tensor(np.zeros((1, 3, 4, 4), np.float32)))
    np.testing.assert_allclose(logvar.asnumpy()[0, :, 0, 0], [20, -30, 5, 0])


def test_sample_uses_half_logvar_as_log_std():
    mean = np.array([[1.0, -2.0]], np.float32)
    logvar = np.array([[0.0, np.log(4.0)]], np.float32)
    noise = np.array([[0.5, 1.0]], np.float32)
    got = AutoencoderKL.sample(Tensor(mean), Tensor(logvar), Tensor(noise)).asnumpy()
    np.testing.assert_allclose(got, [[1.5, 0.0]], rtol=1e-6, atol=1e-6)


def test_tiny_spec_vae_builds_and_bad_config_names_the_key():
    vae = AutoencoderKL(get_spec("tiny-sd15").vae)
    assert any(k.startswith("decoder.up_blocks.3.resnets.2.") for k in state_dict(vae))
    with pytest.raises(UserError, match="down_block_types"):
        AutoencoderKL(dict(TINY, down_block_types=["DownBlock2D"] * 2))


@pytest.mark.parametrize("spec_name", ["sd15", "sdxl-base"])
def test_full_size_vae_names_and_shapes_match_diffusers_without_allocating(spec_name):
    config = get_spec(spec_name).vae
    with torch.device("meta"):
        ref = TorchAutoencoderKL(**config)
    with lazy_parameters():
        ours = AutoencoderKL(config)
    got = {name: tuple(p.shape) for name, p in ours.parameters_and_names()}
    assert all(p.has_init for p in ours.get_parameters())  # nothing allocated
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items() if "Conv2d_0" not in k}
    assert got == expected
    assert sum(int(np.prod(s)) for s in got.values()) == 83_653_863
