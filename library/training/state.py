"""Resumable training state: trained weights, optimizer state, counters and RNG states, in one folder.

The folder is written next to its final place and renamed into it, so a crash during a save leaves the
previous state intact (see save_state). `--resume` restores everything needed for the loss sequence after
resuming to equal an uninterrupted run's.
"""
import json
import os
import shutil
import tempfile

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write, describe_os_error, fsync_dir
from ..models.weights import assign_array
from ..formats.safetensors_io import read_safetensors, write_safetensors

STATE_FILE = "train_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OLD_SUFFIX = ".old"


def state_dir_name(output_name, epoch=None, step=None):
    """kohya's names: `{name}-{epoch:06d}-state`, `{name}-step{step:08d}-state`, `{name}-state`."""
    if epoch is not None:
        return f"{output_name}-{epoch:06d}-state"
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    return f"{output_name}-state"


def save_state(path, trainable, optimizer_state, counters):
    """trainable / optimizer_state: {name: Parameter}; counters: JSON-serialisable dict.

    The files go to a hidden folder next to `path`, are fsynced, and the folder is renamed into place. An
    existing state of the same name is first renamed to `<path>.old` and removed only after the new one is
    in place, so a crash at any moment leaves a complete state under `path` or `<path>.old` (load_state
    falls back to it)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_abandoned_temp_folders(parent, os.path.basename(path))
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(path), dir=parent)
    except OSError as e:
        raise UserError(f"could not save the training state to {path}: {describe_os_error(e)}") from e
    try:
        write_safetensors(os.path.join(tmp, WEIGHTS_FILE), _to_numpy(trainable))
        write_safetensors(os.path.join(tmp, OPTIMIZER_FILE), _to_numpy(optimizer_state))
        with atomic_write(os.path.join(tmp, STATE_FILE)) as counters_tmp:
            with open(counters_tmp, "w", encoding="utf-8") as f:
                json.dump(counters, f, indent=1)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a state folder is an ordinary folder
        old = path + OLD_SUFFIX
        if os.path.exists(path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)  # also one left by a save that was killed between the renames
    except (OSError, UserError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = e if isinstance(e, OSError) else e.__cause__  # the writers wrap OSError in UserError
        reason = describe_os_error(cause) if isinstance(cause, OSError) else str(e)
        raise UserError(f"could not save the training state to {path}: {reason}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_prefix(path):
    return "." + os.path.basename(path) + ".tmp-"


def _remove_abandoned_temp_folders(parent, name):
    """A process killed while saving leaves its hidden temp folder; the next save of that state removes it."""
    prefix = _temp_prefix(name)
    for entry in os.listdir(parent):
        if entry.startswith(prefix):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_state_dir(path):
    """`path`, or `<path>.old` when a crash interrupted the swap of a newer state into `path`."""
    if os.path.isdir(path):
        return path
    if os.path.isdir(path + OLD_SUFFIX) and _is_complete(path + OLD_SUFFIX):
        print(f"--resume {path}: not found, using {path + OLD_SUFFIX} (a save of it was interrupted)")
        return path + OLD_SUFFIX
    raise UserError(f"--resume {path}: not a state folder (expected one written by --save_state)")


def _is_complete(path):
    return all(os.path.isfile(os.path.join(path, name)) for name in (STATE_FILE, WEIGHTS_FILE, OPTIMIZER_FILE))


def read_counters(path):
    """The counters dict of a state folder (step, epoch, data position, RNG states, seed)."""
    path = resolve_state_dir(path)
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"--resume {path}: {STATE_FILE} is missing; the state is incomplete") from e
    except (OSError, ValueError) as e:
        raise UserError(f"--resume {path}: {STATE_FILE} cannot be read ({e})") from e


def load_state(path, trainable, optimizer_state):
    """Restore parameters in place; return the counters dict."""
    path = resolve_state_dir(path)
    for name in (STATE_FILE, WEIGHTS_FILE, OPTIMIZER_FILE):
        if not os.path.exists(os.path.join(path, name)):
            raise UserError(f"--resume {path}: {name} is missing; the state is incomplete")
    weights, _ = read_safetensors(os.path.join(path, WEIGHTS_FILE))
    opt, _ = read_safetensors(os.path.join(path, OPTIMIZER_FILE))
    _assign(trainable, weights, path, "trained weights")
    _assign(optimizer_state, opt, path, "optimizer state")
    return read_counters(path)


def _to_numpy(params):
    return {name: np.ascontiguousarray(p.asnumpy()) for name, p in params.items()}


def _assign(params, arrays, path, what):
    missing = sorted(set(params) - set(arrays))
    extra = sorted(set(arrays) - set(params))
    if missing or extra:
        raise UserError(f"--resume {path}: the saved {what} do not match this run "
                        f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the same options")
    for name, p in params.items():
        array = arrays[name]
        # scalars updated inside a graph (optimizer step counters) can read back as shape (1,)
        if array.size != int(np.prod(p.shape)):
            raise UserError(f"--resume {path}: {name} has shape {array.shape}, this run needs {p.shape}")
        assign_array(p, array.reshape(p.shape))

