"""Resumable training state: trained weights, optimizer state, counters and RNG states, in one folder.

The folder is written next to its final place and renamed into it, so a crash during a save leaves the
previous state intact. `--resume` restores everything needed for the loss sequence after resuming to equal
an uninterrupted run's.
"""
import json
import os
import shutil
import tempfile

import numpy as np

from ..errors import UserError
from ..models.weights import assign_array
from ..formats.safetensors_io import read_safetensors, write_safetensors

STATE_FILE = "train_state.json"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def state_dir_name(output_name, epoch=None, step=None):
    """kohya's names: `{name}-{epoch:06d}-state`, `{name}-step{step:08d}-state`, `{name}-state`."""
    if epoch is not None:
        return f"{output_name}-{epoch:06d}-state"
    if step is not None:
        return f"{output_name}-step{step:08d}-state"
    return f"{output_name}-state"


def save_state(path, trainable, optimizer_state, counters):
    """trainable / optimizer_state: {name: Parameter}; counters: JSON-serialisable dict."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", dir=parent)
    try:
        write_safetensors(os.path.join(tmp, WEIGHTS_FILE), _to_numpy(trainable))
        write_safetensors(os.path.join(tmp, OPTIMIZER_FILE), _to_numpy(optimizer_state))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(counters, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if os.path.exists(path):
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not save the training state to {path}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(path, trainable, optimizer_state):
    """Restore parameters in place; return the counters dict."""
    if not os.path.isdir(path):
        raise UserError(f"--resume {path}: not a state folder (expected one written by --save_state)")
    for name in (STATE_FILE, WEIGHTS_FILE, OPTIMIZER_FILE):
        if not os.path.exists(os.path.join(path, name)):
            raise UserError(f"--resume {path}: {name} is missing; the state is incomplete")
    weights, _ = read_safetensors(os.path.join(path, WEIGHTS_FILE))
    opt, _ = read_safetensors(os.path.join(path, OPTIMIZER_FILE))
    _assign(trainable, weights, path, "trained weights")
    _assign(optimizer_state, opt, path, "optimizer state")
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


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


def prune_old(folder, pattern_prefix, keep):
    """Keep the newest `keep` entries whose names start with pattern_prefix (for --save_last_n_*)."""
    if not keep or not os.path.isdir(folder):
        return
    entries = sorted((e for e in os.listdir(folder) if e.startswith(pattern_prefix)),
                     key=lambda e: os.path.getmtime(os.path.join(folder, e)))
    for e in entries[:-keep]:
        full = os.path.join(folder, e)
        shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
