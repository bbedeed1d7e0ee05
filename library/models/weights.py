"""State dicts of Cells as {diffusers/transformers name: numpy array}."""
import numpy as np
from mindspore import Tensor, ops

from ..errors import UserError


def state_dict(cell, include_adapters=False):
    out = {}
    for name, param in cell.parameters_and_names():
        if not include_adapters and ".adapters." in f".{name}":
            continue
        out[name] = param.asnumpy()
    return out


def load_state_dict(cell, tensors, strict=True, source="checkpoint"):
    """Copy arrays into the cell's parameters by name. Raises UserError naming what does not fit."""
    params = {name: p for name, p in cell.parameters_and_names() if ".adapters." not in f".{name}"}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    mismatched = [f"{k}: file {tuple(np.shape(tensors[k]))} vs model {tuple(params[k].shape)}"
                  for k in sorted(set(params) & set(tensors))
                  if tuple(np.shape(tensors[k])) != tuple(params[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        parts = [f"{source} does not fit the model:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:5])}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {'; '.join(mismatched[:3])}")
        raise UserError("\n  ".join(parts))
    for name, array in tensors.items():
        if name in params:
            assign_array(params[name], array)
    return missing, unexpected


def assign_array(param, array):
    """Write values into a Parameter so that already compiled graphs see them.

    In MindSpore 2.10 `Parameter.set_data` after a graph using the parameter was compiled swaps the Python-side
    tensor only: the compiled graph keeps reading the old memory. `ops.assign` writes in place. set_data is
    still needed for a lazily initialised parameter (no memory yet).
    """
    # reshape: ascontiguousarray turns 0-dim arrays (optimizer step counters) into shape (1,)
    value = Tensor(np.ascontiguousarray(array, dtype=np.float32).reshape(np.shape(array))).astype(param.dtype)
    if getattr(param, "has_init", False):
        param.set_data(value)
    else:
        ops.assign(param, value)
