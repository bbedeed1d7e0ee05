"""Learning-rate schedules by kohya's `--lr_scheduler` names (kohya's get_scheduler_fix over transformers' and
diffusers' formulas), or by `--lr_scheduler_type` (torch.optim.lr_scheduler classes, lr_scheduler_classes.py).

A schedule gives the learning rate of every parameter group for the optimizer update with 0-based index k
(the number of scheduler steps taken before it, torch's `last_epoch`): `schedule(k, base_lrs) -> [lr, ...]`.
`check_scheduler_options(args)` refuses what kohya would refuse (or crash on) before anything loads, and
prints one line for each option that has no effect with the chosen scheduler.
"""
import ast
import logging
import math

from ..errors import UserError
from .lr_scheduler_classes import TORCH_SCHEDULERS, check_torch_scheduler, make_torch_schedule

log = logging.getLogger("sdms.training")

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "cosine_with_min_lr", "warmup_stable_decay", "inverse_sqrt", "piecewise_constant", "adafactor")

# --lr_scheduler_args a scheduler accepts: the keyword arguments of its transformers/diffusers function that
# kohya does not pass itself (a key kohya passes too is a TypeError there; `last_epoch` needs a resumed torch
# scheduler, which --resume replaces)
SCHEDULER_KWARGS = {
    "constant": (), "constant_with_warmup": (), "linear": (), "cosine": ("num_cycles",),
    "cosine_with_restarts": (), "polynomial": ("lr_end",), "inverse_sqrt": (), "cosine_with_min_lr": ("min_lr",),
    "warmup_stable_decay": ("warmup_type", "decay_type"), "piecewise_constant": ("step_rules",), "adafactor": (),
}
WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def parse_scheduler_args(items):
    """`--lr_scheduler_args T_max=100 gamma=0.5` -> dict; values through ast.literal_eval as kohya (a value
    that is no Python literal, e.g. an unquoted `step_rules=1:10,0.1`, stays a string)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--lr_scheduler_args {item!r}: expected key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def steps_or_ratio(value, total_steps):
    """kohya's int_or_float options (--lr_warmup_steps, --lr_decay_steps): a float < 1 is a ratio of the total."""
    if value is None:
        return 0
    if isinstance(value, float) and value < 1:
        return int(value * total_steps)
    return int(value)


def relative_step_adafactor(args):
    """True when --optimizer_type AdaFactor sets its own step size (relative_step, kohya's default for it)."""
    from .optimizers import adafactor_relative_step, parse_optimizer_args

    if (args.optimizer_type or "").lower() != "adafactor":
        return False
    return adafactor_relative_step(parse_optimizer_args(args.optimizer_args))


def _name(args):
    return (args.lr_scheduler or "constant").lower()


def _note(message):
    log.warning(message)


def check_scheduler_options(args):
    """Everything about the schedule that can be judged without the dataset, as kohya's get_scheduler_fix
    judges it; called from session.parse_arguments, before anything loads."""
    name = _name(args)
    kwargs = parse_scheduler_args(args.lr_scheduler_args)
    warmup = args.lr_warmup_steps or 0
    decay = getattr(args, "lr_decay_steps", 0) or 0
    for option, value in (("--lr_warmup_steps", warmup), ("--lr_decay_steps", decay)):
        if value < 0:
            raise UserError(f"{option} must be >= 0 (steps, or a fraction < 1 of the total steps), got {value}")
    if "last_epoch" in kwargs:
        raise UserError("--lr_scheduler_args last_epoch=...: not supported; --resume restores the schedule's "
                        "position")
    relative = relative_step_adafactor(args)
    if args.lr_scheduler_type:
        if relative:
            raise UserError(f"--lr_scheduler_type {args.lr_scheduler_type} has no effect with AdaFactor's "
                            "relative step (relative_step=True, kohya's default for it): the optimizer sets its "
                            "own step size; add --optimizer_args relative_step=False scale_parameter=False "
                            "warmup_init=False to use a learning-rate schedule")
        if warmup:
            raise UserError(f"--lr_scheduler_type {args.lr_scheduler_type} does not use --lr_warmup_steps "
                            f"(kohya refuses it too); set --lr_warmup_steps 0")
        check_torch_scheduler(args.lr_scheduler_type, kwargs)
        if name != "constant":
            _note(f"--lr_scheduler {name} is not used: --lr_scheduler_type {args.lr_scheduler_type} replaces it")
        _note_unused(args, ())
        return
    if name not in SCHEDULERS:
        raise UserError(f"--lr_scheduler {args.lr_scheduler!r} is not supported; choose one of: "
                        f"{', '.join(SCHEDULERS)}, or --lr_scheduler_type with one of: {', '.join(TORCH_SCHEDULERS)}")
    if relative:
        if warmup:
            raise UserError("--lr_warmup_steps has no effect with AdaFactor's relative step (relative_step=True, "
                            "kohya's default for it; kohya refuses it too); set --lr_warmup_steps 0, or add "
                            "--optimizer_args relative_step=False scale_parameter=False warmup_init=False")
        if name != "adafactor":  # kohya switches to its proxy schedule with an info line
            _note(f"--lr_scheduler {name} replaced by adafactor: AdaFactor with relative_step=True (kohya's "
                  f"default for it) sets its own step size")
        name = "adafactor"
    elif name == "adafactor":
        raise UserError("--lr_scheduler adafactor works only with --optimizer_type AdaFactor and its relative "
                        "step (relative_step=True, the default): it reports the step size the optimizer sets "
                        "itself")
    accepted = SCHEDULER_KWARGS[name]
    for key in kwargs:
        if key not in accepted:
            raise UserError(f"--lr_scheduler_args {key}=...: not an argument of --lr_scheduler {name} (it takes "
                            f"{', '.join(accepted) or 'none'}{_kohya_passes(key)})")
    if name in ("constant", "adafactor") and warmup:
        hint = "constant_with_warmup" if name == "constant" else "another scheduler"
        raise UserError(f"--lr_scheduler {name} does not warm up (kohya refuses --lr_warmup_steps with it); use "
                        f"--lr_scheduler {hint} with --lr_warmup_steps {warmup}, or set --lr_warmup_steps 0")
    if name == "piecewise_constant":
        if "step_rules" not in kwargs:
            raise UserError("--lr_scheduler piecewise_constant needs --lr_scheduler_args "
                            "\"step_rules='1:10,0.1:20,0.01'\" (factor:until_step,..., last factor)")
        parse_step_rules(kwargs["step_rules"])
        if warmup:
            _note("--lr_warmup_steps has no effect with --lr_scheduler piecewise_constant (as in kohya)")
    if name == "cosine_with_min_lr":
        has_ratio = args.lr_scheduler_min_lr_ratio is not None
        if has_ratio == ("min_lr" in kwargs):
            raise UserError("--lr_scheduler cosine_with_min_lr needs exactly one of --lr_scheduler_min_lr_ratio R "
                            "(a ratio of the learning rate) and --lr_scheduler_args min_lr=LR")
    if name == "warmup_stable_decay":
        for key in ("warmup_type", "decay_type"):
            if key in kwargs and kwargs[key] not in WSD_SHAPES:
                raise UserError(f"--lr_scheduler_args {key}={kwargs[key]!r}: expected one of {', '.join(WSD_SHAPES)}")
    if name == "polynomial" and args.learning_rate is not None and not args.scale_lr:
        lr_end = float(kwargs.get("lr_end", 1e-7))
        if not args.learning_rate > lr_end:
            raise UserError(f"--lr_scheduler polynomial: --learning_rate {args.learning_rate} must be greater than "
                            f"lr_end ({lr_end}, transformers' default 1e-7); set --lr_scheduler_args lr_end=...")
    if args.lr_scheduler_min_lr_ratio is not None and not 0 <= args.lr_scheduler_min_lr_ratio <= 1:
        raise UserError(f"--lr_scheduler_min_lr_ratio must be in [0, 1], got {args.lr_scheduler_min_lr_ratio}")
    if args.lr_scheduler_timescale is not None and args.lr_scheduler_timescale < 1:
        raise UserError(f"--lr_scheduler_timescale must be >= 1, got {args.lr_scheduler_timescale}")
    _note_unused(args, _USES.get(name, ()))


def _kohya_passes(key):
    source = {"num_cycles": "--lr_scheduler_num_cycles", "power": "--lr_scheduler_power",
              "timescale": "--lr_scheduler_timescale", "min_lr_rate": "--lr_scheduler_min_lr_ratio",
              "min_lr_ratio": "--lr_scheduler_min_lr_ratio", "num_warmup_steps": "--lr_warmup_steps",
              "num_decay_steps": "--lr_decay_steps", "num_training_steps": "--max_train_steps"}.get(key)
    return f"; {key} comes from {source}" if source else ""


# which of the schedule options each scheduler reads (kohya's get_scheduler_fix)
_USES = {
    "cosine_with_restarts": ("lr_scheduler_num_cycles",), "polynomial": ("lr_scheduler_power",),
    "inverse_sqrt": ("lr_scheduler_timescale",),
    "cosine_with_min_lr": ("lr_scheduler_num_cycles", "lr_scheduler_min_lr_ratio"),
    "warmup_stable_decay": ("lr_scheduler_num_cycles", "lr_scheduler_min_lr_ratio", "lr_decay_steps"),
}
_DEFAULTS = {"lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0, "lr_scheduler_timescale": None,
             "lr_scheduler_min_lr_ratio": None, "lr_decay_steps": 0}


def _note_unused(args, used):
    scheduler = f"--lr_scheduler_type {args.lr_scheduler_type}" if args.lr_scheduler_type else \
        f"--lr_scheduler {_name(args)}"
    for option, default in _DEFAULTS.items():
        value = getattr(args, option, default)
        if option not in used and value not in (None, default):
            _note(f"--{option} {value} has no effect with {scheduler} (kohya ignores it too)")


def parse_step_rules(rules):
    """diffusers' piecewise_constant rules "1:10,0.1:20,0.005": factor 1 before step 10, 0.1 before 20, then
    0.005 -> ({until_step: factor}, last factor)."""
    text = str(rules)
    try:
        parts = text.split(",")
        steps = {}
        for part in parts[:-1]:
            factor, until = part.split(":")
            steps[int(until)] = float(factor)
        return steps, float(parts[-1])
    except ValueError as e:
        raise UserError(f"--lr_scheduler_args step_rules={text!r}: expected 'factor:until_step,...,last_factor', "
                        f"e.g. '1:10,0.1:20,0.01'") from e


def make_lr_schedule(args, total_steps, base_lr, optimizer=None):
    """The schedule of this run (args already checked by check_scheduler_options). `base_lr` is the optimizer's
    own learning rate (transformers' optimizer.defaults["lr"], used by polynomial and min_lr); `optimizer` is
    needed by the adafactor proxy, which reports the step size the optimizer sets itself."""
    kwargs = parse_scheduler_args(args.lr_scheduler_args)
    if args.lr_scheduler_type:
        return make_torch_schedule(args.lr_scheduler_type, kwargs)
    if relative_step_adafactor(args):
        return lambda k, base_lrs: optimizer.relative_learning_rates(k + 1)
    factor = _factor_function(_name(args), args, kwargs, total_steps, base_lr)
    return lambda k, base_lrs: [base * factor(k) for base in base_lrs]


def _factor_function(name, args, kwargs, total_steps, base_lr):
    """The LambdaLR factor of transformers'/diffusers' function that kohya calls for `name`."""
    total = int(total_steps)
    warmup = steps_or_ratio(args.lr_warmup_steps, total)

    def warming(k):
        return k < warmup

    def ramp(k):
        return k / max(1, warmup)

    if name == "constant":
        return lambda k: 1.0
    if name == "constant_with_warmup":
        return lambda k: ramp(k) if warming(k) else 1.0
    if name == "piecewise_constant":
        steps, last = parse_step_rules(kwargs["step_rules"])

        def piecewise(k):
            for until in sorted(steps):
                if k < until:
                    return steps[until]
            return last
        return piecewise
    if name == "inverse_sqrt":
        timescale = args.lr_scheduler_timescale or warmup or 10_000

        def inverse_sqrt(k):
            if warming(k):
                return ramp(k)
            return 1.0 / math.sqrt((k + timescale - warmup) / timescale)
        return inverse_sqrt

    def progress(k):
        return (k - warmup) / max(1, total - warmup)

    if name == "linear":
        return lambda k: ramp(k) if warming(k) else max(0.0, (total - k) / max(1, total - warmup))
    if name in ("cosine", "cosine_with_min_lr"):
        # cosine: transformers' default half wave (num_cycles=0.5) unless --lr_scheduler_args num_cycles=...;
        # cosine_with_min_lr: kohya passes num_cycles = --lr_scheduler_num_cycles / 2
        if name == "cosine":
            cycles, floor = float(kwargs.get("num_cycles", 0.5)), 0.0
        else:
            cycles = args.lr_scheduler_num_cycles / 2
            floor = (args.lr_scheduler_min_lr_ratio if args.lr_scheduler_min_lr_ratio is not None
                     else float(kwargs["min_lr"]) / base_lr)

        def cosine(k):
            if warming(k):
                return ramp(k)
            wave = 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress(k)))
            return max(0.0, wave * (1 - floor) + floor)
        return cosine
    if name == "cosine_with_restarts":
        cycles = float(args.lr_scheduler_num_cycles)

        def restarts(k):
            if warming(k):
                return ramp(k)
            p = progress(k)
            if p >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * p) % 1.0))))
        return restarts
    if name == "polynomial":
        power = args.lr_scheduler_power
        lr_end = float(kwargs.get("lr_end", 1e-7))  # transformers decays to an absolute lr_end
        if not base_lr > lr_end:
            raise UserError(f"--lr_scheduler polynomial: the learning rate ({base_lr}) must be greater than lr_end "
                            f"({lr_end}); set --lr_scheduler_args lr_end=... lower")
        end = lr_end / base_lr

        def polynomial(k):
            if warming(k):
                return ramp(k)
            if k > total:
                return end
            return (1.0 - end) * (1.0 - (k - warmup) / max(1, total - warmup)) ** power + end
        return polynomial
    if name == "warmup_stable_decay":
        decay = steps_or_ratio(args.lr_decay_steps, total)
        stable = total - warmup - decay
        if stable < 0:
            raise UserError(f"--lr_scheduler warmup_stable_decay: warm-up ({warmup}) + decay ({decay}) steps exceed "
                            f"the {total} training steps")
        return _wsd(warmup, stable, decay, kwargs.get("warmup_type", "linear"), kwargs.get("decay_type", "cosine"),
                    args.lr_scheduler_min_lr_ratio or 0.0, args.lr_scheduler_num_cycles / 2)
    raise UserError(f"--lr_scheduler {name!r} is not supported; choose one of: {', '.join(SCHEDULERS)}")


def _wsd(warmup, stable, decay, warmup_type, decay_type, floor, cycles):
    """transformers' warmup-stable-decay: warm up from `floor`, hold, decay to `floor`, then stay there."""
    def shape(kind, progress, rising):
        if kind == "linear":
            return progress if rising else 1.0 - progress
        if kind == "cosine":
            return (0.5 * (1.0 - math.cos(math.pi * progress)) if rising
                    else 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))
        return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)

    def factor(k):
        if k < warmup:
            return max(0.0, shape(warmup_type, k / max(1, warmup), True) * (1.0 - floor) + floor)
        if k < warmup + stable:
            return 1.0
        if k < warmup + stable + decay:
            return max(0.0, shape(decay_type, (k - warmup - stable) / max(1, decay), False) * (1.0 - floor) + floor)
        return floor
    return factor
