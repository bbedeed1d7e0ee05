"""Which files a run saves and removes, with kohya's names and arithmetic (train_util's get_*_ckpt_name,
get_remove_epoch_no, get_remove_step_no, save_and_remove_state_*).

- every `--save_every_n_steps` steps: `{name}-step{step:08d}` (+ `-state` with --save_state), the last step too;
- at the end of every `--save_every_n_epochs`-th epoch except the last: `{name}-{epoch:06d}` (+ `-state`);
  `--save_n_epoch_ratio N` sets that interval to floor(epochs / N) (at least 1);
- `--save_last_n_epochs N`: saving epoch e removes the file of epoch e - every * N (the N-th save before);
- `--save_last_n_steps N`: saving step s removes the file of the step that is a multiple of the interval just
  before s - N (so files younger than N steps stay);
- `--save_last_n_*_state` does the same for the state folders (default: the value for the files).
A file is removed by its number only; files of other runs or intervals are never touched.
"""
import logging
import math
import os
import shutil

from ..errors import UserError

log = logging.getLogger("sdms.training")


def epoch_stem(name, epoch):
    return f"{name}-{epoch:06d}"


def step_stem(name, step):
    return f"{name}-step{step:08d}"


def save_every_n_epochs(args, num_epochs):
    """kohya: --save_n_epoch_ratio N overrides --save_every_n_epochs with floor(epochs / N), at least 1."""
    ratio = getattr(args, "save_n_epoch_ratio", None)
    if ratio:
        return math.floor(num_epochs / ratio) or 1
    return args.save_every_n_epochs


def removed_epoch(epoch, every, keep):
    """get_remove_epoch_no: the epoch whose file goes when `epoch` is saved (None: nothing)."""
    if not keep or not every:
        return None
    old = epoch - every * keep
    return old if old >= 0 else None


def removed_step(step, every, keep):
    """get_remove_step_no: the save step just before `step - keep` (None: nothing)."""
    if not keep or not every:
        return None
    old = step - keep - 1
    old -= old % every
    return old if old >= 0 else None


def state_keep(args, kind):
    """--save_last_n_{kind}_state, else --save_last_n_{kind} (kohya: a 0/None state value falls back)."""
    return getattr(args, f"save_last_n_{kind}_state", None) or getattr(args, f"save_last_n_{kind}", None)


def remove_path(path):
    """Remove an old save (file or state folder) if it exists; say so, as kohya does."""
    if not os.path.exists(path):
        return False
    print(f"removing old {'state' if os.path.isdir(path) else 'checkpoint'}: {path}")
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)
    return True


def check_saving_options(args):
    """Values kohya would misuse, and options that do nothing with the others given (one line each)."""
    for option in ("save_every_n_epochs", "save_every_n_steps", "save_n_epoch_ratio", "save_last_n_epochs",
                   "save_last_n_epochs_state", "save_last_n_steps", "save_last_n_steps_state"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UserError(f"--{option} must be >= 1, got {value}")
    epochs = args.save_every_n_epochs or getattr(args, "save_n_epoch_ratio", None)
    unused = []
    if args.save_every_n_epochs and getattr(args, "save_n_epoch_ratio", None):
        log.warning("--save_every_n_epochs %s is replaced by --save_n_epoch_ratio %s (as in kohya)",
                    args.save_every_n_epochs, args.save_n_epoch_ratio)
    if not epochs:
        unused += [o for o in ("save_last_n_epochs", "save_last_n_epochs_state") if getattr(args, o, None)]
    if not args.save_every_n_steps:
        unused += [o for o in ("save_last_n_steps", "save_last_n_steps_state") if getattr(args, o, None)]
    for option in unused:
        kind = "epochs" if "epochs" in option else "steps"
        log.warning("--%s: no effect without --save_every_n_%s (files are removed only when a newer one is "
                    "saved)", option, kind)
    if not args.save_state:
        for option in ("save_last_n_epochs_state", "save_last_n_steps_state"):
            if getattr(args, option, None) and option not in unused:
                log.warning("--%s: no effect without --save_state (no state folders are saved)", option)
