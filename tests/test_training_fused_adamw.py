"""FusedAdamW (one flat AdamW over all trained values) inside the compiled step vs torch.optim.AdamW.

Many parameters of mixed shapes in two groups with their own learning rates (as LoRA's unet / text encoder
groups), gradient clipping, a schedule change between steps, gradient accumulation, and the non-finite skip.
"""
import numpy as np
import pytest
import torch
from mindspore import nn, ops, Tensor, Parameter, ParameterTuple

from library.training.optimizers import FusedAdamW, build_optimizer, optimizer_state_params, set_learning_rates
from library.training.step import StepRunner

SHAPES = [(3, 2), (4,), (2, 3, 1, 1), (5, 2)] * 6  # 24 parameters, LoRA-like 2-D and 4-D shapes


_weighted_square = ops.MultitypeFuncGraph("weighted_square")


@_weighted_square.register("Tensor", "Tensor")
def _weighted_square_sum(param, target):
    return ops.reduce_sum(ops.square(param * 1.5 - target))


class _ManyParams(nn.Cell):
    """loss = x * sum_i ||1.5 p_i - t_i||^2 (x scales the gradients: NaN gives a non-finite step)."""

    def __init__(self, values, targets):
        super().__init__()
        self.params = ParameterTuple([Parameter(Tensor(v), name=f"p{i}") for i, v in enumerate(values)])
        self.targets = tuple(Tensor(t) for t in targets)
        self.hyper_map = ops.HyperMap()

    def construct(self, x):
        return x * ops.addn(self.hyper_map(_weighted_square, self.params, self.targets))


def _values(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _torch_run(values, targets, lrs, factors, max_norm, xs):
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in values]
    half = len(params) // 2
    opt = torch.optim.AdamW([{"params": params[:half], "lr": lrs[0]}, {"params": params[half:], "lr": lrs[1]}],
                            weight_decay=1e-2)
    for factor, x in zip(factors, xs):
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr * factor
        opt.zero_grad()
        loss = sum(((p * 1.5 - torch.from_numpy(t)) ** 2).sum() for p, t in zip(params, targets))
        (loss * x).backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_fused_adamw_step_matches_torch_adamw(accumulation):
    values, targets = _values(0), _values(1)
    lrs, factors, max_norm = (0.05, 0.02), (1.0, 0.5, 0.25), 2.0
    xs = (1.0, 0.7, 1.3)
    expected = _torch_run(values, targets, lrs, factors, max_norm, xs)

    cell = _ManyParams(values, targets)
    half = len(values) // 2
    groups = [{"params": list(cell.params[:half]), "lr": lrs[0]}, {"params": list(cell.params[half:]), "lr": lrs[1]}]
    optimizer = build_optimizer("AdamW", groups, lrs[0], {"weight_decay": 1e-2})
    assert isinstance(optimizer, FusedAdamW)
    runner = StepRunner(cell, optimizer, max_norm, accumulation)
    for factor, x in zip(factors, xs):
        set_learning_rates(optimizer, [lr * factor for lr in lrs])
        for micro in range(accumulation):  # equal micro-batches: their mean is the single-batch gradient
            _, _, updated = runner.run(micro, (Tensor(np.float32(x)),))
        assert updated
    for param, want in zip(cell.params, expected):
        np.testing.assert_allclose(param.asnumpy(), want, rtol=1e-5, atol=1e-6)
    state = optimizer_state_params(optimizer)
    assert float(state["adamw.step"].asnumpy()) == len(factors)


def test_fused_adamw_non_finite_step_changes_nothing():
    values, targets = _values(2), _values(3)
    cell = _ManyParams(values, targets)
    optimizer = build_optimizer("AdamW", [{"params": list(cell.params), "lr": 0.1}], 0.1)
    runner = StepRunner(cell, optimizer, 1.0, 1)
    runner.run(0, (Tensor(np.float32(1.0)),))
    before = {name: p.asnumpy().copy() for name, p in optimizer_state_params(optimizer).items()}
    weights = [p.asnumpy().copy() for p in cell.params]
    loss, norm, _ = runner.run(0, (Tensor(np.float32(np.nan)),))
    assert not np.isfinite(loss) and not np.isfinite(norm)
    for param, want in zip(cell.params, weights):
        np.testing.assert_array_equal(param.asnumpy(), want)
    for name, param in optimizer_state_params(optimizer).items():
        np.testing.assert_array_equal(param.asnumpy(), before[name], err_msg=name)
    loss, _, _ = runner.run(0, (Tensor(np.float32(1.0)),))  # and the next finite step trains again
    assert np.isfinite(loss)
    assert not np.array_equal(cell.params[0].asnumpy(), weights[0])
    assert float(optimizer_state_params(optimizer)["adamw.step"].asnumpy()) == 2.0


def test_amsgrad_keeps_the_per_parameter_adamw():
    p = Parameter(Tensor(np.zeros(2, np.float32)), name="p")
    assert not isinstance(build_optimizer("AdamW", [{"params": [p]}], 1e-3, {"amsgrad": True}), FusedAdamW)
