"""--lr_scheduler / --lr_scheduler_type / --lr_scheduler_args and AdaFactor's relative step, against the
references kohya uses: transformers' and diffusers' schedule functions called the way kohya's
get_scheduler_fix calls them, torch.optim.lr_scheduler classes stepped once per update (accelerate's guard for
OneCycleLR), and transformers' Adafactor, on a dummy torch optimizer with two parameter groups, every step.
"""
import math

import numpy as np
import pytest
import torch
from diffusers.optimization import get_piecewise_constant_schedule
from mindspore import nn, ops, Parameter, Tensor
from transformers.optimization import Adafactor as TorchAdafactor, AdafactorSchedule, TYPE_TO_SCHEDULER_FUNCTION, \
    SchedulerType

from library.errors import UserError
from library.training import session
from library.training.lr_schedules import make_lr_schedule
from library.training.optimizers import build_optimizer, set_learning_rates
from library.training.step import StepRunner

TOTAL = 50
BASE_LRS = [1e-3, 4e-4]


def parse(*argv):
    parser = session.build_parser("t", False, lambda p: None)
    return session.parse_arguments(parser, ["--learning_rate", str(BASE_LRS[0]), *argv])


def torch_optimizer():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in BASE_LRS]
    return torch.optim.SGD(groups, lr=BASE_LRS[0])


def kohya_reference(args, optimizer, total):
    """kohya train_util.get_scheduler_fix (single process), restated."""
    name = args.lr_scheduler
    warmup = int(args.lr_warmup_steps * total) if isinstance(args.lr_warmup_steps, float) else args.lr_warmup_steps
    decay = int(args.lr_decay_steps * total) if isinstance(args.lr_decay_steps, float) else args.lr_decay_steps
    kwargs = {}
    for item in args.lr_scheduler_args or []:
        key, value = item.split("=")
        kwargs[key] = eval(value)  # kohya: ast.literal_eval
    if name == "piecewise_constant":
        return get_piecewise_constant_schedule(optimizer, **kwargs)
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    if name == "constant":
        return function(optimizer, **kwargs)
    if name == "constant_with_warmup":
        return function(optimizer, num_warmup_steps=warmup, **kwargs)
    if name == "inverse_sqrt":
        return function(optimizer, num_warmup_steps=warmup, timescale=args.lr_scheduler_timescale, **kwargs)
    if name == "cosine_with_restarts":
        return function(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                        num_cycles=args.lr_scheduler_num_cycles, **kwargs)
    if name == "polynomial":
        return function(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                        power=args.lr_scheduler_power, **kwargs)
    if name == "cosine_with_min_lr":
        return function(optimizer, num_warmup_steps=warmup, num_training_steps=total,
                        num_cycles=args.lr_scheduler_num_cycles / 2, min_lr_rate=args.lr_scheduler_min_lr_ratio,
                        **kwargs)
    if name in ("linear", "cosine"):
        return function(optimizer, num_warmup_steps=warmup, num_training_steps=total, **kwargs)
    assert name == "warmup_stable_decay"
    return function(optimizer, num_warmup_steps=warmup, num_stable_steps=total - warmup - decay,
                    num_decay_steps=decay, num_cycles=args.lr_scheduler_num_cycles / 2,
                    min_lr_ratio=args.lr_scheduler_min_lr_ratio or 0.0, **kwargs)


def assert_every_step(ours, reference, optimizer, steps, guard=None):
    for k in range(steps):
        expected = [group["lr"] for group in optimizer.param_groups]
        np.testing.assert_allclose(ours(k, BASE_LRS), expected, rtol=1e-6, atol=1e-12, err_msg=f"step {k}")
        optimizer.step()
        if guard is None or guard(reference):
            reference.step()


KOHYA_CASES = [
    ("constant",),
    ("constant_with_warmup", "--lr_warmup_steps", "7"),
    ("linear", "--lr_warmup_steps", "0.1"),
    ("cosine", "--lr_warmup_steps", "5", "--lr_scheduler_args", "num_cycles=1.5"),
    ("cosine_with_restarts", "--lr_warmup_steps", "5", "--lr_scheduler_num_cycles", "3"),
    ("polynomial", "--lr_warmup_steps", "5", "--lr_scheduler_power", "2", "--lr_scheduler_args", "lr_end=1e-5"),
    ("cosine_with_min_lr", "--lr_warmup_steps", "5", "--lr_scheduler_min_lr_ratio", "0.1"),
    ("cosine_with_min_lr", "--lr_warmup_steps", "10%", "--lr_scheduler_num_cycles", "3", "--lr_scheduler_args",
     "min_lr=2e-4"),
    ("warmup_stable_decay", "--lr_warmup_steps", "5", "--lr_decay_steps", "0.3", "--lr_scheduler_min_lr_ratio",
     "0.05"),
    ("warmup_stable_decay", "--lr_warmup_steps", "8", "--lr_decay_steps", "20", "--lr_scheduler_num_cycles", "2",
     "--lr_scheduler_args", "warmup_type='cosine'", "decay_type='1-sqrt'"),
    ("inverse_sqrt", "--lr_warmup_steps", "6"),
    ("inverse_sqrt", "--lr_scheduler_timescale", "20"),
    ("piecewise_constant", "--lr_scheduler_args", "step_rules='1:10,0.5:20,0.1'"),
]


@pytest.mark.parametrize("case", KOHYA_CASES, ids=lambda c: " ".join(c))
def test_kohya_scheduler_matches_transformers_and_diffusers(case):
    args = parse("--lr_scheduler", *case)
    optimizer = torch_optimizer()
    reference = kohya_reference(args, optimizer, TOTAL)
    ours = make_lr_schedule(args, TOTAL, BASE_LRS[0])
    assert_every_step(ours, reference, optimizer, TOTAL + 1)


def test_unquoted_step_rules_are_read_as_text():
    """kohya's literal_eval would reject step_rules=1:10,0.1 unquoted; the plain text is the rule either way."""
    args = parse("--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", "step_rules=1:3,0.1")
    ours = make_lr_schedule(args, TOTAL, BASE_LRS[0])
    assert [ours(k, [1.0])[0] for k in (0, 2, 3, 9)] == [1.0, 1.0, 0.1, 0.1]


TORCH_CASES = [
    ("StepLR", "step_size=7", "gamma=0.5"),
    ("MultiStepLR", "milestones=[5,12,12,30]", "gamma=0.3"),
    ("ExponentialLR", "gamma=0.93"),
    ("LinearLR", "start_factor=0.2", "end_factor=0.9", "total_iters=20"),
    ("LinearLR",),
    ("ConstantLR", "factor=0.5", "total_iters=9"),
    ("PolynomialLR", "total_iters=30", "power=2.0"),
    ("CosineAnnealingLR", "T_max=20", "eta_min=1e-5"),
    ("CosineAnnealingWarmRestarts", "T_0=6", "T_mult=2", "eta_min=2e-5"),
    ("CosineAnnealingWarmRestarts", "T_0=9"),
    ("torch.optim.lr_scheduler.OneCycleLR", "max_lr=[3e-3,1e-3]", "total_steps=40", "cycle_momentum=False"),
    ("OneCycleLR", "max_lr=2e-3", "epochs=4", "steps_per_epoch=10", "pct_start=0.25", "anneal_strategy='linear'",
     "three_phase=True", "cycle_momentum=False"),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: " ".join(c))
def test_lr_scheduler_type_matches_torch(case):
    name, *kwargs = case
    args = parse("--lr_scheduler_type", name, *(["--lr_scheduler_args", *kwargs] if kwargs else []))
    optimizer = torch_optimizer()
    cls = getattr(torch.optim.lr_scheduler, name.rsplit(".", 1)[-1])
    reference = cls(optimizer, **{k: eval(v) for k, v in (item.split("=") for item in kwargs)})

    def accelerate_guard(scheduler):  # AcceleratedScheduler.step: a scheduler with total_steps stops there
        return not hasattr(scheduler, "total_steps") or scheduler._step_count <= scheduler.total_steps
    ours = make_lr_schedule(args, TOTAL, BASE_LRS[0])
    assert_every_step(ours, reference, optimizer, TOTAL + 1, accelerate_guard)


@pytest.mark.parametrize("argv,message", [
    (("--lr_scheduler", "cosine_annealing"), "--lr_scheduler 'cosine_annealing' is not supported"),
    (("--lr_scheduler", "constant", "--lr_warmup_steps", "3"), "constant_with_warmup"),
    (("--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_args", "num_cycles=2"),
     "num_cycles comes from --lr_scheduler_num_cycles"),
    (("--lr_scheduler", "linear", "--lr_scheduler_args", "T_max"), "expected key=value"),
    (("--lr_scheduler", "cosine_with_min_lr"), "exactly one of --lr_scheduler_min_lr_ratio"),
    (("--lr_scheduler", "cosine_with_min_lr", "--lr_scheduler_min_lr_ratio", "0.1", "--lr_scheduler_args",
      "min_lr=1e-5"), "exactly one of"),
    (("--lr_scheduler", "piecewise_constant"), "needs --lr_scheduler_args"),
    (("--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", "step_rules='1:x,0.1'"), "step_rules"),
    (("--lr_scheduler", "warmup_stable_decay", "--lr_scheduler_args", "decay_type='exp'"), "decay_type"),
    (("--lr_scheduler", "adafactor"), "only with --optimizer_type AdaFactor"),
    (("--lr_scheduler", "linear", "--lr_scheduler_args", "last_epoch=3"), "last_epoch"),
    (("--lr_warmup_steps", "1.5"), "lr_warmup_steps"),
    (("--lr_scheduler_type", "ReduceLROnPlateau"), "CosineAnnealingLR"),
    (("--lr_scheduler_type", "mypackage.MySchedule"), "not available here"),
    (("--lr_scheduler_type", "StepLR"), "needs --lr_scheduler_args step_size=..."),
    (("--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=0"), "positive integer"),
    (("--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=3", "gama=0.5"), "not an argument of StepLR"),
    (("--lr_scheduler_type", "CosineAnnealingLR", "--lr_scheduler_args", "T_max=10", "--lr_warmup_steps", "2"),
     "does not use --lr_warmup_steps"),
    (("--lr_scheduler_type", "OneCycleLR", "--lr_scheduler_args", "max_lr=1e-3", "total_steps=10"),
     "cycle_momentum=False"),
    (("--lr_scheduler_type", "OneCycleLR", "--lr_scheduler_args", "max_lr=1e-3", "cycle_momentum=False"),
     "total_steps"),
    (("--optimizer_type", "AdaFactor", "--lr_warmup_steps", "10", "--lr_scheduler", "constant_with_warmup"),
     "relative step"),
    (("--optimizer_type", "AdaFactor", "--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=2"),
     "relative step"),
])
def test_bad_scheduler_options_are_refused_at_parse_time(argv, message):
    with pytest.raises((UserError, SystemExit)) as error:
        parse(*argv)
    if error.type is UserError:
        assert message in str(error.value)
    else:  # argparse's own type error (an int_or_float value)
        assert message == "lr_warmup_steps"


def test_options_without_effect_are_named(caplog):
    parse("--lr_scheduler", "cosine", "--lr_scheduler_power", "2", "--lr_decay_steps", "5")
    text = caplog.text
    assert "--lr_scheduler_power 2.0 has no effect with --lr_scheduler cosine" in text
    assert "--lr_decay_steps 5 has no effect" in text
    caplog.clear()
    parse("--optimizer_type", "AdaFactor", "--lr_scheduler", "cosine")
    assert "--lr_scheduler cosine replaced by adafactor" in caplog.text


def test_bad_max_lr_list_fails_before_training():
    args = parse("--lr_scheduler_type", "OneCycleLR", "--lr_scheduler_args", "max_lr=[1e-3,1e-3,1e-3]",
                 "total_steps=10", "cycle_momentum=False")
    schedule = make_lr_schedule(args, TOTAL, BASE_LRS[0])
    with pytest.raises(UserError, match="3 values for 2 parameter groups"):
        schedule(0, BASE_LRS)


# ----------------------------------------------------------------------------------------------- AdaFactor

class _Quadratic(nn.Cell):
    def __init__(self, w, b):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")

    def construct(self, x, y):
        return ((ops.matmul(x, self.w) + self.b - y) ** 2).mean()


@pytest.mark.parametrize("optimizer_args", [
    {},  # kohya's AdaFactor: relative_step=True (kohya's default) and scale_parameter=True (transformers')
    {"warmup_init": True, "weight_decay": 0.1},  # warmup_init turns relative_step on (kohya)
    {"relative_step": False, "scale_parameter": False, "warmup_init": False},  # kohya's recommended explicit lr
    {"relative_step": False},  # explicit lr, scaled by the parameter's RMS
])
def test_adafactor_matches_transformers(optimizer_args):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    y = rng.standard_normal((6, 5, 4)).astype(np.float32)
    lr = 0.05
    relative = optimizer_args.get("relative_step", True) or optimizer_args.get("warmup_init", False)

    tw, tb = torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(torch.tensor(b))
    torch_kwargs = dict(optimizer_args, relative_step=relative)
    reference = TorchAdafactor([{"params": [tw]}, {"params": [tb]}], lr=None if relative else lr, **torch_kwargs)
    proxy = AdafactorSchedule(reference, lr) if relative else None

    cell = _Quadratic(w, b)
    optimizer = build_optimizer("AdaFactor", [{"params": [cell.w], "lr": lr}, {"params": [cell.b], "lr": lr}], lr,
                                optimizer_args)
    runner = StepRunner(cell, optimizer, 0.0, 1)
    for step in range(6):
        if relative:  # what kohya's adafactor scheduler reports for this update
            ours_lrs = optimizer.relative_learning_rates(step + 1)
        set_learning_rates(optimizer, [lr, lr])
        runner.run(0, (Tensor(x[step]), Tensor(y[step])))
        reference.zero_grad()
        ((torch.tensor(x[step]) @ tw + tb - torch.tensor(y[step])) ** 2).mean().backward()
        reference.step()
        if relative:
            proxy.step()
            np.testing.assert_allclose(ours_lrs, proxy.get_last_lr(), rtol=1e-5)
    np.testing.assert_allclose(cell.w.asnumpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cell.b.asnumpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not math.isclose(float(np.abs(cell.w.asnumpy() - w).max()), 0.0)
