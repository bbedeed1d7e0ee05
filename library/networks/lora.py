"""One LoRA adapter: a low-rank update added to a shared `Linear` or `Conv2d` (kohya's `networks.lora` math).

The adapter is appended to the target's `adapters` list, so the target computes `base(x) + adapter(x)` and its
own parameters keep their names. The adapter returns only the update:

    lora_up(dropout(lora_down(x))) * multiplier * alpha / rank

`lora_down` is a Linear (in -> r, no bias) or a Conv2d with the target's kernel, stride and padding; `lora_up`
is a Linear (r -> out) or a 1x1 Conv2d. multiplier * scale lives in one non-trainable Parameter, so changing
the multiplier (or loading another alpha) never recompiles a graph. In training with datasets of different
`network_multiplier`, every module also multiplies by one shared scalar Parameter (set per batch).
"""
import math

import numpy as np
from mindspore import nn, ops, Parameter, Tensor

from ..models.layers import Conv2d, Linear
from .lowrank import lora_delta


class _TargetRef:
    """Holds the adapted layer without making it a child Cell (its parameters must stay the model's)."""

    def __init__(self, layer):
        self.layer = layer


def write_param(param, array):
    """Write values so already compiled graphs see them (set_data only swaps the Python-side tensor once a
    graph holds the parameter; see models.weights.assign_array). Keeps 0-dim shapes."""
    value = Tensor(np.array(array, dtype=np.float32).reshape(param.shape)).astype(param.dtype)
    if getattr(param, "has_init", False):
        param.set_data(value)
    else:
        ops.assign(param, value)


def kaiming_uniform_a_sqrt5(shape, rng):
    """torch.nn.init.kaiming_uniform_(w, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in * k * k."""
    fan_in = int(np.prod(shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def resolve_alpha(alpha, rank):
    """kohya: alpha None or 0 means alpha = rank (scale 1)."""
    if alpha is None or float(alpha) == 0.0:
        return float(rank)
    return float(alpha)


class LoRAModule(nn.Cell):
    """Low-rank update for one `Linear` or `Conv2d`, named `lora_name` (kohya key prefix)."""

    def __init__(self, lora_name, target, rank, alpha=None, multiplier=1.0, dropout=None, rank_dropout=None,
                 module_dropout=None, rng=None):
        super().__init__()
        if not isinstance(target, (Linear, Conv2d)):
            raise TypeError(f"{lora_name}: LoRA targets Linear or Conv2d layers, not {type(target).__name__}")
        rng = rng or np.random
        self.lora_name = lora_name
        self.rank = int(rank)
        self.alpha = resolve_alpha(alpha, self.rank)
        self.multiplier = float(multiplier)
        self.is_conv = isinstance(target, Conv2d)
        self.target = _TargetRef(target)
        self.dropout = float(dropout or 0.0)
        self.rank_dropout = float(rank_dropout or 0.0)
        self.module_dropout = float(module_dropout or 0.0)
        if self.is_conv:
            k = target.kernel_size
            self.lora_down = Conv2d(target.in_channels, self.rank, k, stride=target.stride, padding=target.padding,
                                    bias=False)
            self.lora_up = Conv2d(self.rank, target.out_channels, 1, bias=False)
            down_shape = (self.rank, target.in_channels, k, k)
            up_shape = (target.out_channels, self.rank, 1, 1)
        else:
            self.lora_down = Linear(target.in_features, self.rank, bias=False)
            self.lora_up = Linear(self.rank, target.out_features, bias=False)
            down_shape = (self.rank, target.in_features)
            up_shape = (target.out_features, self.rank)
        self.lora_down.weight.set_data(Tensor(kaiming_uniform_a_sqrt5(down_shape, rng)))
        self.lora_up.weight.set_data(Tensor(np.zeros(up_shape, np.float32)))
        self.matmul = ops.MatMul(transpose_b=True)
        self.multiplier_scale = Parameter(Tensor(np.float32(self.multiplier * self.scale)), name="multiplier_scale",
                                          requires_grad=False)
        # training with datasets' network_multiplier: one scalar Parameter shared by all modules of a network
        # (LoRANetwork.enable_batch_multiplier); None otherwise, and then the graph has no extra op
        self.batch_multiplier = None

    @property
    def scale(self):
        return self.alpha / self.rank

    # ------------------------------------------------------------------ runtime settings (no recompile)

    def set_multiplier(self, multiplier):
        self.multiplier = float(multiplier)
        self._refresh_scale()

    def set_alpha(self, alpha):
        self.alpha = resolve_alpha(alpha, self.rank)
        self._refresh_scale()

    def _refresh_scale(self):
        write_param(self.multiplier_scale, self.multiplier * self.scale)

    # ------------------------------------------------------------------ forward

    def _rank_mask(self, h, x):
        """Per-sample Bernoulli keep-mask over the rank channels (kohya), broadcast to h's layout (a Linear's h
        is the 2-D view (samples * tokens, r) of x)."""
        keep = (ops.rand((x.shape[0], self.rank)) > self.rank_dropout).astype(h.dtype)
        if self.is_conv:
            return keep.reshape(x.shape[0], self.rank, 1, 1)
        if len(x.shape) == 3:
            return ops.broadcast_to(keep.reshape(x.shape[0], 1, self.rank),
                                    (x.shape[0], x.shape[1], self.rank)).reshape(-1, self.rank)
        return keep

    def construct(self, x):
        scale = ops.cast(self.multiplier_scale, x.dtype)
        if self.batch_multiplier is not None:
            scale = scale * ops.cast(self.batch_multiplier, x.dtype)
        if self.training and self.rank_dropout > 0:
            scale = scale * (1.0 / (1.0 - self.rank_dropout))
        if self.is_conv:
            h = self.lora_down(x)
        else:
            # the down/up weights used directly: one MatMul each on the 2-D view (the Linear cells'
            # reshapes and adapter loops are per-op overhead that dominates small layers)
            x2 = x.reshape(-1, x.shape[-1])
            h = self.matmul(x2, self.lora_down.weight)
        # the scale on the rank-r activations: r channels to multiply instead of out_features
        h = h * scale
        if self.training and self.dropout > 0:
            h = ops.dropout(h, p=self.dropout)
        if self.training and self.rank_dropout > 0:
            h = h * self._rank_mask(h, x)
        if self.is_conv:
            y = self.lora_up(h)
        else:
            y = self.matmul(h, self.lora_up.weight).reshape(x.shape[:-1] + (self.lora_up.out_features,))
        if self.training and self.module_dropout > 0:
            # kohya skips the whole branch with probability module_dropout
            y = y * (ops.rand((1,)) >= self.module_dropout).astype(y.dtype)
        return y

    # ------------------------------------------------------------------ weights

    def down_weight(self):
        return self.lora_down.weight.asnumpy()

    def up_weight(self):
        return self.lora_up.weight.asnumpy()

    def delta_weight(self):
        """alpha/r * up @ down in the target weight's layout (multiplier not applied)."""
        return lora_delta(self.down_weight(), self.up_weight(), self.scale)

    def set_weights(self, down, up, alpha=None):
        """Copy kohya-layout arrays in (Linear LoRA weights stored as [r,in,1,1] are squeezed)."""
        down = np.asarray(down, dtype=np.float32)
        up = np.asarray(up, dtype=np.float32)
        if not self.is_conv:
            down = down.reshape(down.shape[0], down.shape[1]) if down.ndim == 4 else down
            up = up.reshape(up.shape[0], up.shape[1]) if up.ndim == 4 else up
        for name, array, param in (("lora_down", down, self.lora_down.weight), ("lora_up", up, self.lora_up.weight)):
            if tuple(array.shape) != tuple(param.shape):
                raise ValueError(f"{self.lora_name}.{name}.weight: file {tuple(array.shape)} vs model "
                                 f"{tuple(param.shape)}")
        write_param(self.lora_down.weight, down)
        write_param(self.lora_up.weight, up)
        if alpha is not None:
            self.set_alpha(float(np.asarray(alpha).reshape(())))

    def merge_into_base(self, multiplier=None):
        """W += multiplier * alpha/r * up @ down on the target layer (inference; the adapter stays separate)."""
        multiplier = self.multiplier if multiplier is None else float(multiplier)
        weight = self.target.layer.weight
        write_param(weight, weight.asnumpy().astype(np.float32) + multiplier * self.delta_weight())

    def trainable(self):
        return [self.lora_down.weight, self.lora_up.weight]


def count_parameters(modules):
    return sum(int(np.prod(p.shape)) for m in modules for p in m.trainable())


__all__ = ["LoRAModule", "lora_delta", "resolve_alpha", "kaiming_uniform_a_sqrt5", "count_parameters"]
