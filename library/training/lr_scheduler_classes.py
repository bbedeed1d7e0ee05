"""`--lr_scheduler_type`: torch.optim.lr_scheduler classes by name, with their keyword arguments from
`--lr_scheduler_args` (kohya builds `getattr(torch.optim.lr_scheduler, name)(optimizer, **kwargs)`).

Each class is written here as torch's closed form: the learning rate of a group with initial lr `base` after k
scheduler steps (k = optimizer updates, as kohya steps the scheduler once per update). Other class paths
(another module, a class not listed) are refused with the list of these.
"""
import bisect
import math

from ..errors import UserError

TORCH_MODULE = "torch.optim.lr_scheduler."


def _cosine(start, end, pct):
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _step_lr(k, base, step_size, gamma=0.1):
    return base * gamma ** (k // step_size)


def _multi_step_lr(k, base, milestones, gamma=0.1):
    return base * gamma ** bisect.bisect_right(sorted(milestones), k)


def _exponential_lr(k, base, gamma):
    return base * gamma ** k


def _linear_lr(k, base, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    return base * (start_factor + (end_factor - start_factor) * min(total_iters, k) / total_iters)


def _constant_lr(k, base, factor=1.0 / 3, total_iters=5):
    return base * (factor if k < total_iters else 1.0)


def _polynomial_lr(k, base, total_iters=5, power=1.0):
    return base * (1.0 - min(total_iters, k) / total_iters) ** power


def _cosine_annealing_lr(k, base, T_max, eta_min=0.0):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * k / T_max)) / 2


def _cosine_annealing_warm_restarts(k, base, T_0, T_mult=1, eta_min=0.0):
    # torch's step() without an epoch: T_cur counts up and wraps at T_i, which grows by T_mult each restart
    t_cur, t_i = k, T_0
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= T_mult
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def _one_cycle_lr(k, base, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                  anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                  div_factor=25.0, final_div_factor=1e4, three_phase=False, group=0):
    total = total_steps if total_steps is not None else epochs * steps_per_epoch
    peak = max_lr[group] if isinstance(max_lr, (list, tuple)) else max_lr
    initial = peak / div_factor
    low = initial / final_div_factor
    if three_phase:
        phases = [(pct_start * total - 1, initial, peak), (2 * pct_start * total - 2, peak, initial),
                  (total - 1, initial, low)]
    else:
        phases = [(pct_start * total - 1, initial, peak), (total - 1, peak, low)]
    # accelerate stops stepping a scheduler with total_steps once it has taken them (no error past the end)
    step = min(k, total)
    start = 0.0
    for i, (end, lr_from, lr_to) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            if anneal_strategy == "cos":
                return _cosine(lr_from, lr_to, pct)
            return (lr_to - lr_from) * pct + lr_from
        start = end
    raise AssertionError("unreachable")


def _positive_int(name):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{name} must be a positive integer"
    return check


def _number(name, low=None, high=None, low_open=False):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number"
        if low is not None and (value <= low if low_open else value < low):
            return f"{name} must be {'>' if low_open else '>='} {low}"
        if high is not None and value > high:
            return f"{name} must be <= {high}"
    return check


def _milestones(value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, int) and not isinstance(m, bool)
                                                       for m in value):
        return "milestones must be a list of step numbers, e.g. milestones=[100,200]"


def _max_lr(value):
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
        return "max_lr must be a positive number or a list of them (one per parameter group)"


def _choice(name, choices):
    def check(value):
        if value not in choices:
            return f"{name} must be one of {', '.join(map(repr, choices))}"
    return check


def _flag(name):
    def check(value):
        if not isinstance(value, bool):
            return f"{name} must be True or False"
    return check


# name -> (lr function, required kwargs, {kwarg: check})
TORCH_SCHEDULERS = {
    "StepLR": (_step_lr, ("step_size",), {"step_size": _positive_int("step_size"), "gamma": _number("gamma", 0)}),
    "MultiStepLR": (_multi_step_lr, ("milestones",), {"milestones": _milestones, "gamma": _number("gamma", 0)}),
    "ExponentialLR": (_exponential_lr, ("gamma",), {"gamma": _number("gamma", 0)}),
    "LinearLR": (_linear_lr, (), {"start_factor": _number("start_factor", 0, 1, low_open=True),
                                  "end_factor": _number("end_factor", 0, 1),
                                  "total_iters": _positive_int("total_iters")}),
    "ConstantLR": (_constant_lr, (), {"factor": _number("factor", 0, 1), "total_iters": _number("total_iters", 0)}),
    "PolynomialLR": (_polynomial_lr, (), {"total_iters": _positive_int("total_iters"),
                                          "power": _number("power", 0)}),
    "CosineAnnealingLR": (_cosine_annealing_lr, ("T_max",), {"T_max": _number("T_max", 0, low_open=True),
                                                             "eta_min": _number("eta_min", 0)}),
    "CosineAnnealingWarmRestarts": (_cosine_annealing_warm_restarts, ("T_0",),
                                    {"T_0": _positive_int("T_0"), "T_mult": _positive_int("T_mult"),
                                     "eta_min": _number("eta_min", 0)}),
    "OneCycleLR": (_one_cycle_lr, ("max_lr",),
                   {"max_lr": _max_lr, "total_steps": _positive_int("total_steps"), "epochs": _positive_int("epochs"),
                    "steps_per_epoch": _positive_int("steps_per_epoch"), "pct_start": _number("pct_start", 0, 1),
                    "anneal_strategy": _choice("anneal_strategy", ("cos", "linear")),
                    "cycle_momentum": _flag("cycle_momentum"), "base_momentum": _number("base_momentum", 0),
                    "max_momentum": _number("max_momentum", 0), "div_factor": _number("div_factor", 0, low_open=True),
                    "final_div_factor": _number("final_div_factor", 0, low_open=True),
                    "three_phase": _flag("three_phase")}),
}


def resolve_class_name(path):
    """`CosineAnnealingLR` or `torch.optim.lr_scheduler.CosineAnnealingLR` -> `CosineAnnealingLR`."""
    name = path[len(TORCH_MODULE):] if path.startswith(TORCH_MODULE) else path
    if name not in TORCH_SCHEDULERS:
        raise UserError(f"--lr_scheduler_type {path}: not available here; the torch.optim.lr_scheduler classes "
                        f"that are: {', '.join(TORCH_SCHEDULERS)} (or use --lr_scheduler)")
    return name


def check_torch_scheduler(path, kwargs):
    name = resolve_class_name(path)
    _, required, checks = TORCH_SCHEDULERS[name]
    for key, value in kwargs.items():
        if key not in checks:
            raise UserError(f"--lr_scheduler_args {key}=...: not an argument of {name} (it takes "
                            f"{', '.join(checks)})")
        problem = checks[key](value)
        if problem:
            raise UserError(f"--lr_scheduler_args {key}={value!r}: {problem} ({name})")
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise UserError(f"--lr_scheduler_type {name} needs --lr_scheduler_args {' '.join(k + '=...' for k in missing)}")
    if name == "OneCycleLR":
        if "total_steps" not in kwargs and not ("epochs" in kwargs and "steps_per_epoch" in kwargs):
            raise UserError("--lr_scheduler_type OneCycleLR needs --lr_scheduler_args total_steps=N (or epochs=E "
                            "steps_per_epoch=S)")
        if kwargs.get("cycle_momentum", True):
            raise UserError("--lr_scheduler_type OneCycleLR: momentum cycling (cycle_momentum=True, torch's "
                            "default) is not available here: the optimizer's betas/momentum are fixed in the "
                            "compiled step; add --lr_scheduler_args cycle_momentum=False")
    return name


def make_torch_schedule(path, kwargs):
    """`schedule(k, base_lrs) -> [lr]` of the named class (kwargs already checked)."""
    name = check_torch_scheduler(path, kwargs)
    function = TORCH_SCHEDULERS[name][0]
    kwargs = dict(kwargs)
    if name == "OneCycleLR":
        if "pct_start" in kwargs:
            kwargs["pct_start"] = float(kwargs["pct_start"])

        def one_cycle(k, base_lrs):
            peaks = kwargs["max_lr"]
            if isinstance(peaks, (list, tuple)) and len(peaks) != len(base_lrs):
                raise UserError(f"--lr_scheduler_args max_lr: {len(peaks)} values for {len(base_lrs)} parameter "
                                f"groups; give one number or one per group")
            return [function(k, base, group=i, **kwargs) for i, base in enumerate(base_lrs)]
        return one_cycle
    return lambda k, base_lrs: [function(k, base, **kwargs) for base in base_lrs]
