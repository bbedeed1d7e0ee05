"""Dynamic loss scaling (fp16): an overflowing step is skipped and halves the scale, finite steps grow it, the
scaled step updates exactly like the unscaled one, and the scale is a live input of the compiled step."""
import numpy as np
import pytest
from mindspore import nn, ops, Parameter, Tensor

from library.training.loss_scale import DynamicLossScale
from library.training.optimizers import build_optimizer
from library.training.step import StepRunner


class _Quadratic(nn.Cell):
    def __init__(self, values):
        super().__init__()
        self.weight = Parameter(Tensor(values), name="weight")

    def construct(self, x):
        return ops.reduce_sum(ops.square(self.weight * x - 1.0))


def _run(scale, steps, accumulation=1):
    start = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    cell = _Quadratic(start)
    optimizer = build_optimizer("AdamW", [{"params": [cell.weight], "lr": 0.1}], 0.1, {"weight_decay": 0.0})
    runner = StepRunner(cell, optimizer, 1.0, accumulation, loss_scale=scale)
    results = []
    for step in range(steps):
        for micro in range(accumulation):
            results.append(runner.run(micro, (Tensor(np.float32(1.0 + 0.1 * step)),)))
    return cell.weight.asnumpy(), results


def test_scaled_steps_update_like_unscaled_ones():
    plain, _ = _run(None, 3)
    scaled, _ = _run(DynamicLossScale(initial=1024.0), 3)
    np.testing.assert_allclose(scaled, plain, rtol=1e-6)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_overflow_skips_the_update_and_halves_the_scale(accumulation):
    # 1e38 times the loss overflows fp32 in the backward: those updates must be skipped, the scale halved each
    # time, until it is small enough; then training proceeds as if the skipped steps had not been taken
    scale = DynamicLossScale(initial=3.0e38)
    weight, results = _run(scale, 1, accumulation)
    assert not np.isfinite(results[-1][1]) and results[-1][2]
    np.testing.assert_array_equal(weight, np.array([0.5, -1.0, 2.0, 0.25], np.float32))
    assert scale.value == 1.5e38 and scale.skipped_steps == 1 and scale.good_steps == 0


def test_scale_grows_after_the_growth_interval_and_survives_a_state_round_trip():
    scale = DynamicLossScale(initial=8.0, growth_interval=2)
    _run(scale, 5)  # the compiled step reads the scale's Parameter: every value it took gave finite grads
    assert scale.value == 32.0 and scale.good_steps == 1
    again = DynamicLossScale()
    again.load(scale.state())
    assert again.value == 32.0 and again.good_steps == 1
    assert float(again.parameter.asnumpy()) == 32.0
    assert scale.update(float("inf")) is False and scale.value == 16.0 and scale.good_steps == 0
    assert DynamicLossScale(initial=1.0).update(float("nan")) is False  # never below 1
