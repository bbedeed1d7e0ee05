"""Where a run starts: step counter, epoch, first batch, as kohya's train_network decides it from
`--initial_step` / `--initial_epoch` / `--skip_until_initial_step` and `--resume`.

- `--resume` alone: exactly where the state was saved (step, epoch and the batch inside it; here the state
  records the batch, so no batch is trained twice or skipped: kohya's `--resume --skip_until_initial_step`).
- `--initial_step N` (or `--initial_epoch E`, N = (E - 1) x steps per epoch; `--initial_step` wins), with or
  without `--resume` (then the state's weights, optimizer and random states are used, its counters are not):
  - with `--skip_until_initial_step`: the batches of the first N steps are skipped (the data order of a run that
    trained them) and the step counter starts at N;
  - without it: only the epoch counter starts at N // steps per epoch (kohya: "for informative purpose"); no
    batch is skipped and the step counter starts at 0, so the run ends when its epochs run out.
- The learning-rate schedule is not moved by these options: it starts from its beginning without `--resume`
  and continues from the state's position with it (kohya: "initial_epoch/step doesn't affect lr scheduler").
"""
import logging
from dataclasses import dataclass

from ..errors import UserError

log = logging.getLogger("sdms.training")


@dataclass
class StartingPoint:
    step: int = 0
    epoch: int = 0  # completed epochs (0-based index of the epoch to run)
    batch: int = 0  # first batch (micro-batch) index inside that epoch


def initial_step_option(args, steps_per_epoch):
    """The step asked for by --initial_step / --initial_epoch, or None."""
    if getattr(args, "initial_step", None) is not None:
        return int(args.initial_step)
    if getattr(args, "initial_epoch", None) is not None:
        return (int(args.initial_epoch) - 1) * steps_per_epoch
    return None


def starting_point(args, steps_per_epoch, total_steps, resumed=None):
    """resumed: (step, epoch, batch) of the --resume state, or None."""
    initial = initial_step_option(args, steps_per_epoch)
    if initial is None:
        return StartingPoint(*resumed) if resumed else StartingPoint()
    if initial > 0 and initial >= total_steps:
        option = "--initial_step" if getattr(args, "initial_step", None) is not None else "--initial_epoch"
        value = args.initial_step if option == "--initial_step" else args.initial_epoch
        raise UserError(f"{option} {value} starts at step {initial}, but the run has {total_steps} steps "
                        f"(max_train_steps must be greater than the initial step)")
    if resumed:
        log.warning("--resume: the state's step %d is not used; %s sets where the run starts", resumed[0],
                    "--initial_step" if getattr(args, "initial_step", None) is not None else "--initial_epoch")
    if initial == 0:
        return StartingPoint()
    epoch = initial // steps_per_epoch
    if getattr(args, "skip_until_initial_step", False):
        log.info("skipping the batches of %d steps", initial)
        return StartingPoint(initial, epoch, (initial % steps_per_epoch) * max(1, args.gradient_accumulation_steps))
    return StartingPoint(0, epoch, 0)


def check_starting_options(args):
    """Before anything loads: values kohya asserts on, and --skip_until_initial_step with nothing to skip."""
    initial_step = getattr(args, "initial_step", None)
    initial_epoch = getattr(args, "initial_epoch", None)
    if initial_step is not None and initial_step < 0:
        raise UserError(f"--initial_step must be >= 0 (0 is the first step), got {initial_step}")
    if initial_epoch is not None and initial_epoch < 1:
        raise UserError(f"--initial_epoch must be >= 1 (1 is the first epoch), got {initial_epoch}")
    if initial_step is not None and initial_epoch is not None:
        log.warning("--initial_epoch %d is not used: --initial_step %d overrides it", initial_epoch, initial_step)
    if initial_step and not args.max_train_epochs and initial_step >= args.max_train_steps:
        raise UserError(f"--initial_step {initial_step} must be less than --max_train_steps {args.max_train_steps}")
    if getattr(args, "skip_until_initial_step", False) and initial_step is None and initial_epoch is None \
            and not args.resume:
        log.warning("--skip_until_initial_step: nothing to skip without --initial_step / --initial_epoch")
