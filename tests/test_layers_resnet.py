"""ResnetBlock2D / Downsample2D / Upsample2D: forward parity with diffusers on the same weights; lazy init."""
import numpy as np
import torch
from diffusers.models.resnet import Downsample2D as TorchDownsample2D
from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D
from diffusers.models.resnet import Upsample2D as TorchUpsample2D
import mindspore as ms
from mindspore import Tensor

from library.models.layers import lazy_parameters
from library.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from library.models.weights import load_state_dict, state_dict


def _copy_weights(torch_module, cell):
    # diffusers' Downsample2D registers its conv twice (`conv` and the legacy alias `Conv2d_0`).
    load_state_dict(cell, {k: v.detach().numpy() for k, v in torch_module.state_dict().items()
                           if "Conv2d_0" not in k})


def _rel_err(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def test_resnet_block_matches_diffusers_with_temb_and_shortcut():
    torch.manual_seed(0)
    ref = TorchResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4, eps=1e-5).eval()
    ours = ResnetBlock2D(8, 16, temb_channels=12, groups=4, eps=1e-5)
    assert set(state_dict(ours)) == set(ref.state_dict())
    _copy_weights(ref, ours)
    x = np.random.RandomState(1).randn(2, 8, 6, 6).astype(np.float32)
    temb = np.random.RandomState(2).randn(2, 12).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), torch.from_numpy(temb)).numpy()
    got = ours(Tensor(x), Tensor(temb)).asnumpy()
    assert _rel_err(got, expected) <= 1e-4


def test_vae_style_resnet_block_without_temb_matches_diffusers():
    torch.manual_seed(0)
    ref = TorchResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4, eps=1e-6).eval()
    ours = ResnetBlock2D(8, 8, temb_channels=None, groups=4, eps=1e-6)
    assert set(state_dict(ours)) == set(ref.state_dict())
    assert ours.conv_shortcut is None and ours.time_emb_proj is None
    _copy_weights(ref, ours)
    x = np.random.RandomState(3).randn(1, 8, 5, 7).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x), None).numpy()
    assert _rel_err(ours(Tensor(x)).asnumpy(), expected) <= 1e-4


def test_downsample_symmetric_and_vae_padding_match_diffusers():
    for padding in (1, 0):
        torch.manual_seed(padding)
        ref = TorchDownsample2D(6, use_conv=True, out_channels=10, padding=padding).eval()
        ours = Downsample2D(6, 10, padding=padding)
        _copy_weights(ref, ours)
        x = np.random.RandomState(4).randn(2, 6, 8, 8).astype(np.float32)
        with torch.no_grad():
            expected = ref(torch.from_numpy(x)).numpy()
        got = ours(Tensor(x)).asnumpy()
        assert got.shape == expected.shape == (2, 10, 4, 4)
        assert _rel_err(got, expected) <= 1e-4


def test_upsample_matches_diffusers():
    torch.manual_seed(5)
    ref = TorchUpsample2D(6, use_conv=True, out_channels=4).eval()
    ours = Upsample2D(6, 4)
    _copy_weights(ref, ours)
    x = np.random.RandomState(5).randn(2, 6, 3, 5).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = ours(Tensor(x)).asnumpy()
    assert got.shape == (2, 4, 6, 10)
    assert _rel_err(got, expected) <= 1e-4


def test_lazy_parameters_defer_allocation_until_load_or_compile():
    with lazy_parameters():
        block = ResnetBlock2D(8, 16, temb_channels=12, groups=4)
    params = dict(block.parameters_and_names())
    assert all(p.has_init for p in params.values())
    weight = np.full((16, 8, 3, 3), 0.5, np.float32)
    params["conv1.weight"].set_data(Tensor(weight))
    assert not params["conv1.weight"].has_init
    out = block(Tensor(np.ones((1, 8, 4, 4), np.float32)), Tensor(np.ones((1, 12), np.float32)))
    assert out.shape == (1, 16, 4, 4) and np.isfinite(out.asnumpy()).all()
    np.testing.assert_array_equal(params["conv1.weight"].asnumpy(), weight)
    # The others got their initializers on compile: GroupNorm weight ones, conv weights bounded by 1/sqrt(fan_in).
    np.testing.assert_array_equal(params["norm2.weight"].asnumpy(), np.ones(16, np.float32))
    w2 = params["conv2.weight"].asnumpy()
    assert 0 < np.abs(w2).max() <= 1 / np.sqrt(16 * 9)
