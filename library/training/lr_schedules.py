"""Learning-rate schedules with transformers' names and formulas (as kohya resolves `--lr_scheduler`).

A schedule is a function of the optimizer-update index k (0-based) returning the factor applied to every
group's base learning rate, like torch's LambdaLR.
"""
import math

from ..errors import UserError

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def resolve_warmup(warmup, total_steps):
    """`--lr_warmup_steps` is a step count, or (float < 1) a fraction of the total steps, as in kohya."""
    if warmup is None:
        return 0
    if isinstance(warmup, float) and warmup < 1:
        return int(warmup * total_steps)
    return int(warmup)


def make_schedule(name, total_steps, warmup_steps=0, num_cycles=1, power=1.0, base_lr=1.0):
    name = (name or "constant").lower()
    if name not in SCHEDULERS:
        raise UserError(f"--lr_scheduler {name!r} is not supported; choose one of: {', '.join(SCHEDULERS)}")
    warmup = resolve_warmup(warmup_steps, total_steps)
    if name == "constant" and warmup > 0:
        raise UserError("--lr_scheduler constant does not warm up; use --lr_scheduler constant_with_warmup "
                        f"with --lr_warmup_steps {warmup}, or set --lr_warmup_steps 0")
    total = max(1, int(total_steps))

    def warming(k):
        return warmup > 0 and k < warmup

    def progress(k):
        return (k - warmup) / max(1, total - warmup)

    if name == "constant":
        return lambda k: 1.0
    if name == "constant_with_warmup":
        return lambda k: k / max(1, warmup) if warming(k) else 1.0
    if name == "linear":
        return lambda k: k / max(1, warmup) if warming(k) else max(0.0, (total - k) / max(1, total - warmup))
    if name == "cosine":
        # transformers' cosine uses half a cycle by default (num_cycles=0.5); kohya passes no override.
        return lambda k: (k / max(1, warmup) if warming(k)
                          else max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * 0.5 * progress(k)))))
    if name == "cosine_with_restarts":
        def restarts(k):
            if warming(k):
                return k / max(1, warmup)
            p = progress(k)
            if p >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * p) % 1.0))))
        return restarts

    lr_end = min(1.0, 1e-7 / base_lr) if base_lr > 0 else 0.0  # transformers decays to an absolute 1e-7

    def polynomial(k):
        if warming(k):
            return k / max(1, warmup)
        if k > total:
            return lr_end
        return (1.0 - lr_end) * (1.0 - (k - warmup) / max(1, total - warmup)) ** power + lr_end
    return polynomial
