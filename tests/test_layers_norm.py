"""GroupNorm (native kernel) and LayerNorm: forward and gradients against the written-out formula and torch."""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn, ops, Tensor

from library.models.layers import GroupNorm, LayerNorm, group_norm_reference


class ReferenceGroupNorm(nn.Cell):
    def __init__(self, gn):
        super().__init__()
        self.gn = gn

    def construct(self, x):
        return group_norm_reference(x, self.gn.num_groups, self.gn.weight, self.gn.bias, self.gn.eps)


class Grads(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def _loss(self, x, g):
        return (self.net(x) * g).sum()

    def construct(self, x, g):
        (dx, _), dparams = self.grad(self._loss, self.params)(x, g)
        return (dx,) + dparams


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _randomise(cell, rs):
    for p in cell.trainable_params():
        p.set_data(Tensor(rs.randn(*p.shape).astype(np.float32)))


@pytest.mark.parametrize("shape,groups,eps", [((2, 8, 5, 3), 4, 1e-6), ((2, 6, 7), 3, 1e-5)])
def test_group_norm_matches_formula_and_torch(shape, groups, eps):
    rs = np.random.RandomState(len(shape))
    gn = GroupNorm(groups, shape[1], eps=eps)
    _randomise(gn, rs)
    x = (rs.randn(*shape) * 3 + 1).astype(np.float32)
    g = rs.randn(*shape).astype(np.float32)
    out = gn(Tensor(x)).asnumpy()
    grads = [t.asnumpy() for t in Grads(gn)(Tensor(x), Tensor(g))]
    ref_cell = ReferenceGroupNorm(gn)
    out_ref = ref_cell(Tensor(x)).asnumpy()
    grads_ref = [t.asnumpy() for t in Grads(ref_cell)(Tensor(x), Tensor(g))]

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(gn.weight.asnumpy(), requires_grad=True)
    bt = torch.tensor(gn.bias.asnumpy(), requires_grad=True)
    yt = torch.nn.functional.group_norm(xt, groups, wt, bt, eps)
    (yt * torch.from_numpy(g)).sum().backward()

    assert _rel(out, out_ref) <= 1e-5 and _rel(out, yt.detach().numpy()) <= 1e-4
    for got, plain, ref in zip(grads, grads_ref, (xt.grad, wt.grad, bt.grad)):
        assert _rel(got, plain) <= 1e-5
        assert _rel(got, ref.numpy()) <= 1e-4


def test_layer_norm_matches_torch():
    rs = np.random.RandomState(3)
    ln = LayerNorm(6, eps=1e-5)
    _randomise(ln, rs)
    x = rs.randn(2, 4, 6).astype(np.float32)
    g = rs.randn(2, 4, 6).astype(np.float32)
    dx, dw, db = (t.asnumpy() for t in Grads(ln)(Tensor(x), Tensor(g)))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(ln.weight.asnumpy(), requires_grad=True)
    bt = torch.tensor(ln.bias.asnumpy(), requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, (6,), wt, bt, 1e-5)
    (yt * torch.from_numpy(g)).sum().backward()
    assert _rel(ln(Tensor(x)).asnumpy(), yt.detach().numpy()) <= 1e-4
    for got, ref in ((dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        assert _rel(got, ref.numpy()) <= 1e-4
