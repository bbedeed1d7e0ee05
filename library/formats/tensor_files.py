"""Any tensor file as a flat {name: array} for inspection (show_metadata, check_lora_weights): safetensors
with numpy, torch pickles only with the user's consent and through the restricted torch-free reader."""
import os
import zipfile

import numpy as np

from ..errors import UserError
from .safetensors_io import read_header, read_safetensors
from .torch_zip import UnsupportedTorchFile, read_torch_file

PICKLE_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin")


def _flatten(value, prefix, out):
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, np.ndarray):
        out[prefix] = value
    elif hasattr(value, "_parameters"):  # an old ParameterDict
        _flatten(value._parameters, prefix, out)


def read_pickle_tensors(path, allow_pickle):
    """{dotted name: array} of a torch.save file; nested dicts become dotted names."""
    if not allow_pickle:
        raise UserError(f"{path} is a pickle file, which can run code when loaded; pass --allow_unsafe_pickle if "
                        "you trust it (it is then read by a restricted reader that builds only tensors and "
                        "containers)")
    try:
        data = read_torch_file(path)
    except UnsupportedTorchFile as e:
        raise UserError(f"{path}: this reader handles torch.save files of tensors and containers only ({e}); "
                        "convert the file to .safetensors") from e
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    out = {}
    _flatten(data, "", out)
    return out


def tensor_file_header(path, allow_pickle=False):
    """({name: (dtype name, shape)}, metadata) without reading tensor data where the format allows."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    if path.lower().endswith(".safetensors"):
        infos, metadata, _ = read_header(path)
        return {name: (info.dtype, info.shape) for name, info in infos.items()}, metadata
    if path.lower().endswith(PICKLE_EXTENSIONS):
        tensors = read_pickle_tensors(path, allow_pickle)
        return {name: (str(array.dtype), tuple(array.shape)) for name, array in tensors.items()}, {}
    raise UserError(f"{path}: unsupported extension (expected .safetensors, or {'/'.join(PICKLE_EXTENSIONS)} with "
                    "--allow_unsafe_pickle)")


def read_tensor_file(path, allow_pickle=False):
    """({name: array}, metadata); bf16 comes back as float32."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    if path.lower().endswith(".safetensors"):
        return read_safetensors(path)
    if path.lower().endswith(PICKLE_EXTENSIONS):
        return read_pickle_tensors(path, allow_pickle), {}
    raise UserError(f"{path}: unsupported extension (expected .safetensors, or {'/'.join(PICKLE_EXTENSIONS)} with "
                    "--allow_unsafe_pickle)")
