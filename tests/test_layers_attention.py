"""AttentionCore: the CPU custom-backward path against autodiff of the plain formulation and torch SDPA."""
import math

import numpy as np
import pytest
import torch
from mindspore import nn, ops, Tensor

from library.models.attention import AttentionCore, PlainAttention, SoftmaxAttention, flash_attention_fits


class PlainCore(nn.Cell):
    """AttentionCore with the plain (autodiff) formulation in place of the custom backward."""

    def __init__(self, heads, head_dim):
        super().__init__()
        self.core = AttentionCore(heads, head_dim)
        scale = 1.0 / math.sqrt(head_dim)
        self.core.core = PlainAttention(scale, False)
        self.core.core_masked = PlainAttention(scale, True)

    def construct(self, q, k, v, mask=None):
        return self.core(q, k, v, mask)


class InputGrads(nn.Cell):
    def __init__(self, net, with_mask):
        super().__init__()
        self.net = net
        self.with_mask = with_mask
        self.grad = ops.GradOperation(get_all=True)

    def _loss(self, q, k, v, mask, g):
        if self.with_mask:
            return (self.net(q, k, v, mask) * g).sum()
        return (self.net(q, k, v) * g).sum()

    def construct(self, q, k, v, mask, g):
        dq, dk, dv, _, _ = self.grad(self._loss)(q, k, v, mask, g)
        return dq, dk, dv


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.mark.parametrize("causal,sq,sk", [(False, 5, 7), (True, 7, 7)])
def test_custom_backward_matches_autodiff_and_torch(causal, sq, sk):
    heads, dim = 2, 8
    rs = np.random.RandomState(sq * 10 + sk + causal)
    q = rs.randn(2, sq, heads * dim).astype(np.float32)
    k = rs.randn(2, sk, heads * dim).astype(np.float32)
    v = rs.randn(2, sk, heads * dim).astype(np.float32)
    g = rs.randn(2, sq, heads * dim).astype(np.float32)
    mask = np.triu(np.full((sq, sk), -1e9, np.float32), 1)[None, None] if causal else np.zeros((1,), np.float32)

    ours = AttentionCore(heads, dim)
    assert isinstance(ours.core, SoftmaxAttention)  # the tests run on the CPU
    args = [Tensor(a) for a in (q, k, v)]
    out = (ours(*args, Tensor(mask)) if causal else ours(*args)).asnumpy()
    grads = [t.asnumpy() for t in InputGrads(ours, causal)(*args, Tensor(mask), Tensor(g))]
    plain = PlainCore(heads, dim)
    out_plain = (plain(*args, Tensor(mask)) if causal else plain(*args)).asnumpy()
    grads_plain = [t.asnumpy() for t in InputGrads(plain, causal)(*args, Tensor(mask), Tensor(g))]

    def heads_first(a):
        return torch.tensor(a.reshape(2, -1, heads, dim).transpose(0, 2, 1, 3), requires_grad=True)

    qt, kt, vt = heads_first(q), heads_first(k), heads_first(v)
    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    ot = ot.transpose(1, 2).reshape(2, sq, heads * dim)
    (ot * torch.from_numpy(g)).sum().backward()
    ref_grads = [t.grad.transpose(1, 2).reshape(2, -1, heads * dim).numpy() for t in (qt, kt, vt)]

    assert _rel(out, out_plain) <= 1e-5 and _rel(out, ot.detach().numpy()) <= 1e-4
    for got, expected_plain, expected in zip(grads, grads_plain, ref_grads):
        assert _rel(got, expected_plain) <= 1e-5
        assert _rel(got, expected) <= 1e-4


def test_flash_attention_head_dim_rule():
    assert flash_attention_fits(64) and flash_attention_fits(160)
    assert not flash_attention_fits(40) and not flash_attention_fits(1024)
    assert not AttentionCore(8, 64).use_flash  # never on the CPU


@pytest.mark.parametrize("causal,sq,sk,max_elements", [(False, 13, 6, 2 * 2 * 6 * 4), (True, 9, 9, 2 * 2 * 9 * 2)])
def test_query_blocks_give_the_unblocked_result(causal, sq, sk, max_elements):
    """Row-blocked forward and backward (long queries) equal the single-block path."""
    heads, dim = 2, 4
    rs = np.random.RandomState(sq + sk)
    q, g = (rs.randn(2, heads, sq, dim).astype(np.float32) for _ in range(2))
    k, v = (rs.randn(2, heads, sk, dim).astype(np.float32) for _ in range(2))
    mask = np.triu(np.full((sq, sk), -1e9, np.float32), 1)[None, None] if causal else np.zeros((1,), np.float32)
    scale = 1.0 / math.sqrt(dim)
    blocked = SoftmaxAttention(scale, causal, max_block_elements=max_elements)
    whole = SoftmaxAttention(scale, causal, max_block_elements=1 << 30)
    assert len(blocked._blocks(Tensor(q), Tensor(k))) > 2

    class Grads(nn.Cell):
        def __init__(self, core):
            super().__init__()
            self.core = core
            self.grad = ops.GradOperation(get_all=True)

        def _loss(self, q, k, v, mask, g):
            return (self.core(q, k, v, mask) * g).sum()

        def construct(self, q, k, v, mask, g):
            return self.core(q, k, v, mask), self.grad(self._loss)(q, k, v, mask, g)[:3]

    args = [Tensor(a) for a in (q, k, v, mask, g)]
    out_b, grads_b = Grads(blocked)(*args)
    out_w, grads_w = Grads(whole)(*args)
    assert _rel(out_b.asnumpy(), out_w.asnumpy()) <= 1e-6
    for got, expected in zip(grads_b, grads_w):
        assert _rel(got.asnumpy(), expected.asnumpy()) <= 1e-6
