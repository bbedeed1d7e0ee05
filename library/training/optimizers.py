"""Optimizers by kohya's `--optimizer_type` names, running inside the compiled train step.

AdamW is `FusedAdamW` below (torch's AdamW math on one flat vector of all trained values: on tiny nets the
per-op overhead of a per-parameter update dominated the step); with amsgrad/maximize it is MindSpore's
experimental AdamW. SGD is MindSpore's experimental SGD. Lion and Adafactor are written here with the same
interface: a Cell whose construct takes the gradient tuple, with one learning-rate Parameter per group in
`self.lrs` that the loop updates every step from the schedule (Adafactor's relative step, kohya's default for
it, ignores them and sets its own step size).
"""
import ast
import itertools

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor, ParameterTuple

from ..errors import UserError

SUPPORTED = ("AdamW", "SGD", "SGDNesterov", "Lion", "AdaFactor")
_ALIASES = {"adamw": "AdamW", "sgd": "SGD", "sgdnesterov": "SGDNesterov", "lion": "Lion", "adafactor": "AdaFactor"}
_UNAVAILABLE_HINT = {  # torch-only optimizers kohya users type; what to use instead
    "adamw8bit": "AdamW", "pagedadamw8bit": "AdamW", "pagedadamw": "AdamW", "pagedadamw32bit": "AdamW",
    "lion8bit": "Lion", "pagedlion8bit": "Lion", "sgdnesterov8bit": "SGDNesterov",
}


def parse_optimizer_args(items):
    """`--optimizer_args weight_decay=0.01 betas=0.9,0.99` -> dict (values through ast.literal_eval, as kohya)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--optimizer_args {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def build_optimizer(name, param_groups, lr, optimizer_args=None):
    """param_groups: list of {"params": [Parameter], "lr": float}. Returns a Cell taking the gradient tuple."""
    key = (name or "AdamW").lower()
    kwargs = dict(optimizer_args or {})
    if key in _UNAVAILABLE_HINT:
        raise UserError(f"--optimizer_type {name}: 8-bit/paged optimizers need bitsandbytes (CUDA only); "
                        f"use --optimizer_type {_UNAVAILABLE_HINT[key]} (more optimizers: issue 16)")
    if key not in _ALIASES:
        raise UserError(f"--optimizer_type {name!r} is not supported; choose one of: {', '.join(SUPPORTED)} "
                        f"(more optimizers: issue 16)")
    groups = [{"params": list(g["params"]), "lr": float(g.get("lr", lr))} for g in param_groups if g["params"]]
    if not groups:
        raise UserError("nothing to train: no trainable parameters were selected")
    try:
        if key == "adamw":
            from mindspore.experimental.optim import AdamW
            betas = tuple(float(b) for b in kwargs.pop("betas", (0.9, 0.999)))
            if not kwargs.get("amsgrad") and not kwargs.get("maximize"):
                kwargs.pop("amsgrad", None)
                kwargs.pop("maximize", None)
                return FusedAdamW(groups, betas=betas, eps=float(kwargs.pop("eps", 1e-8)),
                                  weight_decay=float(kwargs.pop("weight_decay", 1e-2)), **kwargs)
            return AdamW(groups, lr=float(lr), betas=betas, eps=float(kwargs.pop("eps", 1e-8)),
                         weight_decay=float(kwargs.pop("weight_decay", 1e-2)), **kwargs)
        if key in ("sgd", "sgdnesterov"):
            from mindspore.experimental.optim import SGD
            nesterov = key == "sgdnesterov" or bool(kwargs.pop("nesterov", False))
            momentum = float(kwargs.pop("momentum", 0.9 if nesterov else 0.0))
            return SGD(groups, lr=float(lr), momentum=momentum, nesterov=nesterov,
                       weight_decay=float(kwargs.pop("weight_decay", 0.0)), **kwargs)
        if key == "lion":
            return Lion(groups, **kwargs)
        kwargs["relative_step"] = adafactor_relative_step(kwargs)
        return Adafactor(groups, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"--optimizer_args not accepted by {name}: {e}") from e


def check_optimizer(name, optimizer_args, lr):
    """Refuse an unknown optimizer or arguments it does not take before any model loads, by building it on
    one placeholder parameter: the same code path as training, so the check cannot drift from it."""
    placeholder = Parameter(Tensor(np.zeros(1, np.float32)), name="optimizer_check", requires_grad=True)
    build_optimizer(name, [{"params": [placeholder], "lr": lr}], lr, optimizer_args)


class _GroupedOptimizer(nn.Cell):
    """Parameters in groups, one lr Parameter per group (set from Python every step)."""

    def __init__(self, groups):
        super().__init__(auto_prefix=False)
        self.parameters = ParameterTuple([p for g in groups for p in g["params"]])
        self.group_bounds = []
        start = 0
        for g in groups:
            self.group_bounds.append((start, start + len(g["params"])))
            start += len(g["params"])
        self.lrs = ParameterTuple([Parameter(Tensor(g["lr"], ms.float32), name=f"learning_rate_group_{i}",
                                             requires_grad=False) for i, g in enumerate(groups)])
        self.hyper_map = ops.HyperMap()


_flatten_fp32 = ops.MultitypeFuncGraph("flatten_fp32")
_assign_piece = ops.MultitypeFuncGraph("assign_piece")


@_flatten_fp32.register("Tensor")
def _flatten_tensor(tensor):
    return ops.cast(tensor, ms.float32).reshape(-1)


@_assign_piece.register("Tensor", "Tensor")
def _assign_flat_piece(param, piece):
    return ops.assign(param, ops.cast(piece.reshape(param.shape), param.dtype))


class FusedAdamW(_GroupedOptimizer):
    """torch.optim.AdamW (no amsgrad) over all parameters as one flat vector: a fixed ~20 ops per step plus a
    reshape/assign per parameter, instead of ~15 ops per parameter. The train step hands in the flattened
    gradient (`apply_flat`); `construct(gradients)` keeps the usual tuple interface. Moments are flat
    Parameters, so saved optimizer state is three arrays (exp_avg, exp_avg_sq, step)."""

    flat = True

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        # Each group's parameters ordered by size: each run of equal sizes splits back out of the flat vector
        # with one Split (the CPU has no SplitV, and ops.split with sections is a slice per piece)
        groups = [dict(g, params=sorted(g["params"], key=lambda p: int(np.prod(p.shape)))) for g in groups]
        super().__init__(groups)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        sizes = [int(np.prod(p.shape)) for p in self.parameters]
        runs, start = [], 0
        for size, members in itertools.groupby(sizes):
            count = len(list(members))
            runs.append((start, size, count))
            start += size * count
        self.runs = tuple(runs)
        self.element_group = None
        if len(self.group_bounds) > 1:
            self.element_group = Tensor(np.concatenate([np.full(sum(sizes[a:b]), g, np.int32)
                                                        for g, (a, b) in enumerate(self.group_bounds)]))
        total = sum(sizes)
        self.exp_avg = Parameter(Tensor(np.zeros(total, np.float32)), name="adamw.exp_avg", requires_grad=False)
        self.exp_avg_sq = Parameter(Tensor(np.zeros(total, np.float32)), name="adamw.exp_avg_sq",
                                    requires_grad=False)
        self.state_step = Parameter(Tensor(0.0, ms.float32), name="adamw.step", requires_grad=False)

    def flatten(self, tensors):
        """Tensors in `self.parameters` order -> one fp32 vector. HyperMap, not a Python loop: an unrolled loop
        over ~150 tensors nests calls past the compiler's depth limit."""
        return ops.concat(self.hyper_map(_flatten_fp32, tensors))

    def _learning_rates(self):
        if self.element_group is None:
            return self.lrs[0]
        return ops.gather(ops.stack(self.lrs), self.element_group, 0)

    def _pieces(self, flat):
        """The flat vector back into one piece per parameter (flat, in `self.parameters` order)."""
        pieces = ()
        for start, size, count in self.runs:
            segment = flat[start:start + size * count]
            if count == 1:
                pieces = pieces + (segment,)
            else:
                pieces = pieces + ops.Split(0, count)(segment.reshape(count, size))
        return pieces

    def apply_flat(self, grad, finite):
        """One AdamW update from the flat fp32 gradient; nothing changes (step counter included) unless
        `finite` (a bool tensor) is True."""
        step = self.state_step + ops.cast(finite, ms.float32)
        ops.assign(self.state_step, step)
        lr = self._learning_rates()
        param = self.flatten(self.parameters)
        exp_avg = self.exp_avg * self.beta1 + grad * (1.0 - self.beta1)
        exp_avg_sq = self.exp_avg_sq * self.beta2 + grad * grad * (1.0 - self.beta2)
        bias_correction1 = 1.0 - ops.pow(self.beta1, step)
        bias_correction2_sqrt = ops.sqrt(1.0 - ops.pow(self.beta2, step))
        denom = ops.sqrt(exp_avg_sq) / bias_correction2_sqrt + self.eps
        new_param = param * (1.0 - lr * self.weight_decay) - (lr / bias_correction1) * (exp_avg / denom)
        ops.assign(self.exp_avg, ops.where(finite, exp_avg, self.exp_avg))
        ops.assign(self.exp_avg_sq, ops.where(finite, exp_avg_sq, self.exp_avg_sq))
        new_param = ops.where(finite, new_param, param)
        self.hyper_map(_assign_piece, self.parameters, self._pieces(new_param))
        return True

    def construct(self, gradients):
        return self.apply_flat(self.flatten(gradients), ops.ones((), ms.bool_))


_lion_update = ops.MultitypeFuncGraph("lion_update")


@_lion_update.register("Tensor", "Number", "Number", "Number", "Tensor", "Tensor", "Tensor")
def _lion_param_update(lr, beta1, beta2, weight_decay, param, grad, exp_avg):
    update = ops.sign(exp_avg * beta1 + grad * (1.0 - beta1))
    new_param = param * (1.0 - lr * weight_decay) - lr * update
    ops.assign(param, new_param)
    ops.assign(exp_avg, exp_avg * beta2 + grad * (1.0 - beta2))
    return True


class Lion(_GroupedOptimizer):
    """Lion (Chen et al. 2023): sign of an interpolated momentum, decoupled weight decay."""

    def __init__(self, groups, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(groups)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.weight_decay = float(weight_decay)
        self.exp_avg = self.parameters.clone(prefix="exp_avg", init="zeros")

    def construct(self, gradients):
        for i, (start, end) in enumerate(self.group_bounds):
            self.hyper_map(ops.partial(_lion_update, self.lrs[i], self.beta1, self.beta2, self.weight_decay),
                           self.parameters[start:end], gradients[start:end], self.exp_avg[start:end])
        return True


def adafactor_relative_step(optimizer_args):
    """kohya's AdaFactor: relative_step defaults to True, and warmup_init=True turns it on."""
    return bool(optimizer_args.get("relative_step", True) or optimizer_args.get("warmup_init", False))


class Adafactor(_GroupedOptimizer):
    """transformers' Adafactor (what kohya's AdaFactor is): factored second moments for matrices, RMS update
    clipping, decay 1 - t^-0.8. relative_step (kohya's default): the step size is min(1e-2, 1/sqrt(t)) (with
    warmup_init: min(1e-6 t, 1/sqrt(t))) instead of the group's learning rate; scale_parameter (transformers'
    default) multiplies it by max(eps[1], RMS(parameter)). The first moment (beta1) is not available."""

    def __init__(self, groups, eps=(1e-30, 1e-3), clip_threshold=1.0, decay_rate=-0.8, weight_decay=0.0,
                 relative_step=True, scale_parameter=True, warmup_init=False, beta1=None):
        if beta1 is not None:
            raise UserError("--optimizer_args: AdaFactor's first moment (beta1) is not available here; remove "
                            "beta1 from --optimizer_args")
        super().__init__(groups)
        self.eps1, self.eps2 = float(eps[0]), float(eps[1])
        self.clip_threshold = float(clip_threshold)
        self.decay_rate = float(decay_rate)
        self.weight_decay = float(weight_decay)
        self.relative_step = bool(relative_step)
        self.scale_parameter = bool(scale_parameter)
        self.warmup_init = bool(warmup_init)
        self.step = Parameter(Tensor(0.0, ms.float32), name="adafactor_step", requires_grad=False)
        rows, cols, full = [], [], []
        for i, p in enumerate(self.parameters):
            shape = tuple(p.shape)
            factored = len(shape) >= 2
            rows.append(Parameter(Tensor(np.zeros(shape[:-1] if factored else (1,), np.float32)),
                                  name=f"exp_avg_sq_row.{i}", requires_grad=False))
            cols.append(Parameter(Tensor(np.zeros(shape[:-2] + shape[-1:] if factored else (1,), np.float32)),
                                  name=f"exp_avg_sq_col.{i}", requires_grad=False))
            full.append(Parameter(Tensor(np.zeros(shape if not factored else (1,), np.float32)),
                                  name=f"exp_avg_sq.{i}", requires_grad=False))
        self.factored = tuple(len(p.shape) >= 2 for p in self.parameters)
        self.exp_avg_sq_row = ParameterTuple(rows)
        self.exp_avg_sq_col = ParameterTuple(cols)
        self.exp_avg_sq = ParameterTuple(full)

    def construct(self, gradients):
        ops.assign_add(self.step, Tensor(1.0, ms.float32))
        beta2t = 1.0 - ops.pow(self.step, self.decay_rate)
        relative = None
        if self.relative_step:
            min_step = self.step * 1e-6 if self.warmup_init else 1e-2
            relative = ops.minimum(min_step, ops.rsqrt(self.step))
        for gi, (start, end) in enumerate(self.group_bounds):
            for i in range(start, end):
                param = self.parameters[i]
                grad = gradients[i]
                lr = relative if self.relative_step else self.lrs[gi]
                if self.scale_parameter:  # the parameter's RMS before this update
                    lr = lr * ops.maximum(ops.sqrt((param * param).mean()), self.eps2)
                sq = grad * grad + self.eps1
                if self.factored[i]:
                    row = self.exp_avg_sq_row[i]
                    col = self.exp_avg_sq_col[i]
                    new_row = row * beta2t + sq.mean(axis=-1) * (1.0 - beta2t)
                    new_col = col * beta2t + sq.mean(axis=-2) * (1.0 - beta2t)
                    ops.assign(row, new_row)
                    ops.assign(col, new_col)
                    r = ops.rsqrt(new_row / new_row.mean(axis=-1, keep_dims=True)).expand_dims(-1)
                    c = ops.rsqrt(new_col).expand_dims(-2)
                    update = grad * r * c
                else:
                    full = self.exp_avg_sq[i]
                    new_full = full * beta2t + sq * (1.0 - beta2t)
                    ops.assign(full, new_full)
                    update = grad * ops.rsqrt(new_full)
                rms = ops.sqrt((update * update).mean())
                update = update / ops.maximum(rms / self.clip_threshold, 1.0)
                new_param = param - lr * update
                if self.weight_decay != 0.0:
                    new_param = new_param - param * (self.weight_decay * lr)
                ops.assign(param, new_param)
        return True

    def relative_learning_rates(self, step):
        """The step size update `step` (1-based) gives the first parameter of each group, as transformers'
        AdafactorSchedule reports it (kohya's `adafactor` scheduler, for logging)."""
        step = max(1, int(step))
        size = min(1e-6 * step if self.warmup_init else 1e-2, 1.0 / np.sqrt(step))
        rates = []
        for start, _ in self.group_bounds:
            scale = 1.0
            if self.scale_parameter:
                value = self.parameters[start].asnumpy().astype(np.float64)
                scale = max(self.eps2, float(np.sqrt(np.mean(value * value))))
            rates.append(size * scale)
        return rates


def optimizer_state_params(optimizer):
    """Every state Parameter of an optimizer (moments, step counters, lrs), for save/resume."""
    trained = {id(p) for p in optimizer.parameters}
    return {p.name: p for p in optimizer.get_parameters() if id(p) not in trained} if hasattr(
        optimizer, "get_parameters") else {}


def set_learning_rates(optimizer, lrs):
    # ops.assign, not set_data: the compiled step must see the new value (see models.weights.assign_array)
    for lr_param, value in zip(optimizer.lrs, lrs):
        ops.assign(lr_param, Tensor(np.array(value, np.float32)))


def group_base_lrs(param_groups, lr):
    return [float(g.get("lr", lr)) for g in param_groups if g["params"]]
