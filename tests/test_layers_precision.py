"""Mixed-precision helper (CPU refuses low precision; the casting itself) and the recompute helper."""
import warnings

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops, Tensor

from library.errors import UserError
from library.models.layers import LayerNorm, Linear, maybe_recompute
from library.models.precision import apply_mixed_precision, cast_compute, parse_dtype
from library.models.resnet import ResnetBlock2D
from library.models.weights import load_state_dict, state_dict


class LinearThenNorm(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = Linear(4, 6)
        self.norm = LayerNorm(6)

    def construct(self, x):
        h = self.proj(x)
        return h, self.norm(h)


def test_cpu_refuses_low_precision_with_a_warning():
    net = LinearThenNorm()
    with pytest.warns(UserWarning, match="stays in fp32"):
        assert apply_mixed_precision(net, "fp16") == ms.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_mixed_precision(net, "no") == ms.float32
    h, _ = net(Tensor(np.ones((2, 4), np.float32)))
    assert h.dtype == ms.float32


def test_parse_dtype_names_the_option():
    assert parse_dtype("bf16") == ms.bfloat16 and parse_dtype(ms.float16) == ms.float16
    with pytest.raises(UserError, match="fp16, bf16"):
        parse_dtype("fp8")


def test_cast_compute_runs_linear_in_fp16_and_keeps_norm_fp32():
    reference, net = LinearThenNorm(), LinearThenNorm()
    load_state_dict(net, state_dict(reference))
    x = np.random.RandomState(0).randn(2, 4).astype(np.float32)
    h32, y32 = (t.asnumpy() for t in reference(Tensor(x)))
    cast_compute(net, ms.float16)  # before the first call: a compiled graph keeps its dtypes
    h16, y = net(Tensor(x))
    assert h16.dtype == ms.float16 and y.dtype == ms.float32
    assert net.proj.weight.dtype == ms.float32  # masters stay fp32
    np.testing.assert_allclose(h16.asnumpy().astype(np.float32), h32, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(y.asnumpy(), y32, rtol=2e-2, atol=2e-2)


class WeightGrads(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def _loss(self, x):
        return (self.net(x) ** 2).sum()

    def construct(self, x):
        return self.grad(self._loss, self.params)(x)


def test_recompute_keeps_gradients():
    plain = ResnetBlock2D(4, 8, temb_channels=None, groups=2)
    checkpointed = ResnetBlock2D(4, 8, temb_channels=None, groups=2)
    load_state_dict(checkpointed, state_dict(plain))
    assert maybe_recompute(checkpointed, True) is checkpointed
    assert maybe_recompute(plain, False) is plain
    x = Tensor(np.random.RandomState(1).randn(1, 4, 5, 5).astype(np.float32))
    for a, b in zip(WeightGrads(plain)(x), WeightGrads(checkpointed)(x)):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-6)
