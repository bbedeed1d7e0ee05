"""Conv2d: the CPU im2col formulation (forward, dx, dW, db) against MindSpore's native conv and torch."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn, ops, Tensor

from library.models.layers import Conv2d, Im2colConv2d


class NativeConv(nn.Cell):
    """The plain MindSpore formulation, same parameters."""

    def __init__(self, conv):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        pad = conv.padding
        self.conv = ops.Conv2D(conv.out_channels, conv.kernel_size, pad_mode="pad" if pad else "valid", pad=pad,
                               stride=conv.stride)

    def construct(self, x):
        return self.conv(x, self.weight) + self.bias.reshape(1, -1, 1, 1)


class GradOfWeightedSum(nn.Cell):
    """(d/dx, d/dparams) of sum(net(x) * g)."""

    def __init__(self, net, params):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(params)
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x, g):
        return self.grad(self._loss, self.params)(x, g)

    def _loss(self, x, g):
        return (self.net(x) * g).sum()


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 7), (2, 1, 8), (2, 0, 9)])
def test_im2col_conv_matches_native_and_torch(stride, padding, size):
    conv = Conv2d(4, 6, 3, stride=stride, padding=padding)
    assert isinstance(conv.conv, Im2colConv2d)  # the tests run on the CPU
    rs = np.random.RandomState(stride * 10 + padding)
    x = rs.randn(2, 4, size, size).astype(np.float32)
    w, b = conv.weight.asnumpy(), conv.bias.asnumpy()
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    g = rs.randn(*yt.shape).astype(np.float32)
    (yt * torch.from_numpy(g)).sum().backward()

    y = conv(Tensor(x)).asnumpy()
    (dx, _), (dw, db) = GradOfWeightedSum(conv, [conv.weight, conv.bias])(Tensor(x), Tensor(g))
    native = NativeConv(conv)
    y_nat = native(Tensor(x)).asnumpy()
    (dx_nat, _), (dw_nat, db_nat) = GradOfWeightedSum(native, [conv.weight, conv.bias])(Tensor(x), Tensor(g))

    for ours, plain, ref in ((y, y_nat, yt), (dx, dx_nat, xt.grad), (dw, dw_nat, wt.grad), (db, db_nat, bt.grad)):
        ours = ours if isinstance(ours, np.ndarray) else ours.asnumpy()
        plain = plain if isinstance(plain, np.ndarray) else plain.asnumpy()
        ref = ref.detach().numpy()
        assert ours.shape == ref.shape
        assert _rel(ours, plain) <= 1e-5
        assert _rel(ours, ref) <= 1e-4


def test_frozen_weight_still_gives_input_grad_and_adapters_add():
    conv = Conv2d(3, 5, 3, padding=1)
    conv.weight.requires_grad = False
    adapter = Conv2d(3, 5, 3, padding=1, bias=False)
    conv.adapters.append(adapter)
    rs = np.random.RandomState(7)
    x = rs.randn(1, 3, 5, 5).astype(np.float32)
    g = rs.randn(1, 5, 5, 5).astype(np.float32)
    (dx, _), (dw_adapter,) = GradOfWeightedSum(conv, [adapter.weight])(Tensor(x), Tensor(g))

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight.asnumpy())
    wa = torch.tensor(adapter.weight.asnumpy(), requires_grad=True)
    yt = (torch.nn.functional.conv2d(xt, wt, torch.tensor(conv.bias.asnumpy()), padding=1)
          + torch.nn.functional.conv2d(xt, wa, padding=1))
    (yt * torch.from_numpy(g)).sum().backward()
    assert _rel(conv(Tensor(x)).asnumpy(), yt.detach().numpy()) <= 1e-4
    assert _rel(dx.asnumpy(), xt.grad.numpy()) <= 1e-4
    assert _rel(dw_adapter.asnumpy(), wa.grad.numpy()) <= 1e-4


def test_one_by_one_conv_stays_native():
    assert not isinstance(Conv2d(4, 4, 1).conv, Im2colConv2d)


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 7), (2, 1, 8), (2, 0, 9)])
def test_banded_forward_for_large_inputs_matches_torch(stride, padding, size):
    rs = np.random.RandomState(size)
    x = rs.randn(2, 3, size, size).astype(np.float32)
    w = rs.randn(4, 3, 3, 3).astype(np.float32)
    ho = (size + 2 * padding - 3) // stride + 1
    banded = Im2colConv2d(3, stride, padding, max_elements=27 * ho * 2)  # bands of 2 output rows
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride,
                                          padding=padding).numpy()
    got = banded(Tensor(x), Tensor(w)).asnumpy()
    assert got.shape == expected.shape
    assert _rel(got, expected) <= 1e-5
