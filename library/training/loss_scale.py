"""Dynamic loss scaling for fp16 training (torch's GradScaler rule, what accelerate/kohya use).

The loss is multiplied by `scale` before the backward so small fp16 gradients do not underflow; the step divides
it out again. A step whose gradients overflow (non-finite norm) is skipped by the train step, and the scale is
halved; after `growth_interval` finite steps in a row it is doubled. The scale lives in a Parameter the
compiled step reads, so changing it never recompiles; it is updated with ops.assign (set_data would be invisible
to the compiled graph).
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor

from ..models.weights import assign_array

INITIAL_SCALE = 2.0 ** 16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000
MIN_SCALE = 1.0


class DynamicLossScale:
    def __init__(self, initial=INITIAL_SCALE, growth_interval=GROWTH_INTERVAL):
        self.parameter = Parameter(Tensor(np.float32(initial), ms.float32), name="loss_scale",
                                   requires_grad=False)
        self.value = float(initial)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0
        self.skipped_steps = 0

    def update(self, grad_norm):
        """After an optimizer step: `grad_norm` is the norm of the unscaled gradients (non-finite = overflow)."""
        if grad_norm is not None and math.isfinite(grad_norm):
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self._set(self.value * GROWTH_FACTOR)
                self.good_steps = 0
            return True
        self.skipped_steps += 1
        self.good_steps = 0
        self._set(max(MIN_SCALE, self.value * BACKOFF_FACTOR))
        return False

    def _set(self, value):
        self.value = float(value)
        assign_array(self.parameter, np.float32(self.value))

    def state(self):
        return {"scale": self.value, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load(self, state):
        self._set(float(state["scale"]))
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
