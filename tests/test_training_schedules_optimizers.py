"""Optimizers follow torch's update rules inside the compiled step (schedules: test_training_lr_schedulers.py)."""
import numpy as np
import pytest
import torch
from mindspore import nn, ops, Parameter, Tensor

from library.errors import UserError
from library.training.optimizers import build_optimizer, set_learning_rates
from library.training.step import StepRunner


class _Quadratic(nn.Cell):
    def __init__(self, w, b):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")

    def construct(self, x, y):
        return ((ops.matmul(x, self.w) + self.b - y) ** 2).mean()


def _torch_run(opt_name, w, b, x, y, lr, steps, max_norm, accumulation, schedule):
    tw, tb = torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(torch.tensor(b))
    if opt_name == "AdamW":
        opt = torch.optim.AdamW([tw, tb], lr=lr, weight_decay=1e-2)
    else:
        opt = torch.optim.SGD([tw, tb], lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step)
        opt.zero_grad()
        for micro in range(accumulation):
            loss = ((torch.tensor(x[micro]) @ tw + tb - torch.tensor(y[micro])) ** 2).mean()
            (loss / accumulation).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_([tw, tb], max_norm)
        opt.step()
    return losses, tw.detach().numpy(), tb.detach().numpy()


@pytest.mark.parametrize("opt_name,accumulation", [("AdamW", 1), ("AdamW", 2), ("SGD", 1)])
def test_train_step_matches_torch(opt_name, accumulation):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((accumulation, 5, 3)).astype(np.float32)
    y = rng.standard_normal((accumulation, 5, 4)).astype(np.float32)
    lr, steps, max_norm = 0.05, 6, 0.5
    def schedule(k):  # transformers' linear schedule with 2 warm-up steps
        return k / 2 if k < 2 else (steps - k) / (steps - 2)
    ref_losses, ref_w, ref_b = _torch_run(opt_name, w, b, x, y, lr, steps, max_norm, accumulation, schedule)

    cell = _Quadratic(w, b)
    optimizer = build_optimizer(opt_name, [{"params": [cell.w, cell.b], "lr": lr}], lr,
                                {"weight_decay": 1e-2} if opt_name == "AdamW" else {})
    runner = StepRunner(cell, optimizer, max_norm, accumulation)
    losses = []
    for step in range(steps):
        set_learning_rates(optimizer, [lr * schedule(step)])
        for micro in range(accumulation):
            loss, _, updated = runner.run(micro, (Tensor(x[micro]), Tensor(y[micro])))
            losses.append(loss)
        assert updated
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(cell.w.asnumpy(), ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cell.b.asnumpy(), ref_b, rtol=1e-5, atol=1e-6)


def test_non_finite_gradient_skips_the_update():
    cell = _Quadratic(np.ones((3, 4), np.float32), np.zeros(4, np.float32))
    optimizer = build_optimizer("AdamW", [{"params": [cell.w, cell.b], "lr": 0.1}], 0.1)
    runner = StepRunner(cell, optimizer, 1.0, 1)
    before = cell.w.asnumpy().copy()
    x = np.full((2, 3), np.nan, np.float32)
    loss, norm, _ = runner.run(0, (Tensor(x), Tensor(np.zeros((2, 4), np.float32))))
    assert not np.isfinite(loss)
    np.testing.assert_array_equal(cell.w.asnumpy(), before)


def test_unsupported_optimizer_message():
    p = Parameter(Tensor(np.zeros(2, np.float32)), name="p")
    with pytest.raises(UserError, match="bitsandbytes"):
        build_optimizer("AdamW8bit", [{"params": [p]}], 1e-3)
    with pytest.raises(UserError, match="--optimizer_type"):
        build_optimizer("Prodigy", [{"params": [p]}], 1e-3)
