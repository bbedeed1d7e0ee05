"""Pickled checkpoints (`.ckpt`, `.bin`, `.pt`): read only with the user's explicit consent and torch.

Unpickling can run code from the file, so it needs `--allow_unsafe_pickle`; even then torch's restricted
`weights_only=True` loader is used.
"""
import os

from ..errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
ALLOW_PICKLE_FLAG = "--allow_unsafe_pickle"


def _convert_hint(path):
    return (f"convert it to .safetensors first, e.g. in Python with torch and safetensors installed:\n"
            f"    import torch, safetensors.torch\n"
            f"    sd = torch.load({path!r}, weights_only=True); sd = sd.get('state_dict', sd)\n"
            f"    safetensors.torch.save_file({{k: v.contiguous() for k, v in sd.items() "
            f"if hasattr(v, 'contiguous')}}, {os.path.splitext(path)[0] + '.safetensors'!r})")


def read_pickled_state_dict(path, allow_pickle):
    """{name: np.ndarray} from a torch pickle (a `state_dict` entry is unwrapped). Raises UserError."""
    path = os.fspath(path)
    if not allow_pickle:
        raise UserError(f"{path} is a pickle file, which can run code when it is loaded, so it is not read by "
                        f"default. Pass {ALLOW_PICKLE_FLAG} if you trust the file, or {_convert_hint(path)}")
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{path}: reading pickle checkpoints needs torch, which is not installed; "
                        f"{_convert_hint(path)} on a machine that has torch") from e
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise UserError(f"checkpoint {path} does not exist") from e
    except Exception as e:  # torch raises many types for corrupt/unsafe files; all mean "cannot read"
        raise UserError(f"cannot read {path} with torch.load(weights_only=True): {e}") from e
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        global_step = loaded.get("global_step")
        loaded = loaded["state_dict"]
    else:
        global_step = None
    if not isinstance(loaded, dict):
        raise UserError(f"{path} does not hold a state dict (found {type(loaded).__name__})")
    tensors = {}
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value = value.float()
            tensors[name] = value.numpy()
    if global_step is not None:
        tensors = _StateDict(tensors)
        tensors.global_step = global_step
    return tensors


class _StateDict(dict):
    """A dict that also remembers the `.ckpt`'s global_step (SD2 512-base files say 875000)."""

    global_step = None


def global_step_of(tensors):
    return getattr(tensors, "global_step", None)

