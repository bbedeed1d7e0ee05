"""A checkpoint as numpy component dicts, without building the model: read, change, write back.

The tools (merge a LoRA into a model, extract a LoRA from two models, inspect an embedding against a model's
vocabulary) work on `{"unet", "vae", "text_encoders": [...]}` with diffusers/transformers names, as the
loader does before it fills the Cells. Written back, a single file keeps its own layout (`update_single_file`);
a diffusers folder becomes a single file in the family's LDM/SGM layout. Imports no MindSpore.
"""
import dataclasses
import os

import numpy as np

from ..errors import UserError
from ..formats.safetensors_io import Bf16Tensor, read_safetensors, write_safetensors
from .detect import check_overrides, decide_prediction, detect_spec, resolve_model_config, with_prediction
from .diffusers_folder import is_diffusers_folder, read_diffusers_components, spec_from_diffusers_folder
from .layout import join_single_file, split_single_file, update_single_file
from .pickle_files import PICKLE_SUFFIXES, global_step_of, read_pickled_state_dict
from .spec_metadata import spec_to_metadata

SAVE_DTYPES = {"fp32": np.float32, "float": np.float32, "fp16": np.float16, "float16": np.float16,
               "bf16": "bf16", "bfloat16": "bf16"}
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


@dataclasses.dataclass
class ModelComponents:
    path: str
    spec: object  # ModelSpec
    components: dict  # {"unet": {...}, "vae": {...}, "text_encoders": [{...}, ...]}
    original: dict = None  # the single file's tensors (LDM/SGM names); None for a diffusers folder
    metadata: dict = dataclasses.field(default_factory=dict)
    logit_scales: list = None

    def single_file_tensors(self):
        """The model in single-file layout: the original file's own keys and shapes, or (folder) the family's."""
        if self.original is not None:
            return update_single_file(self.original, self.components, self.spec, self.logit_scales)
        return join_single_file(self.components, self.spec, self.logit_scales)


def read_single_file(path, allow_pickle=False):
    """(tensors, metadata, global_step) of a `.safetensors` (validated header) or, with consent, a pickle."""
    path = os.fspath(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        tensors = read_pickled_state_dict(path, allow_pickle)
        return tensors, {}, global_step_of(tensors)
    if not path.lower().endswith(".safetensors"):
        raise UserError(f"{path}: unknown checkpoint format; expected a .safetensors file, a diffusers folder "
                        f"(with model_index.json or unet/config.json), or with --allow_unsafe_pickle a "
                        f"{'/'.join(PICKLE_SUFFIXES)} file")
    tensors, metadata = read_safetensors(path)
    return tensors, metadata, None


def folder_spec(path, model_config=None, v2=None, v_parameterization=None, sdxl=None):
    """The ModelSpec of a diffusers folder (its config.json files, or --model_config)."""
    if not is_diffusers_folder(path):
        raise UserError(f"{path} is a folder but not a diffusers model folder (no model_index.json or "
                        "unet/config.json); pass a .safetensors file or a diffusers folder")
    spec = resolve_model_config(model_config) if model_config is not None else spec_from_diffusers_folder(path)
    check_overrides(spec.family, v2, sdxl, path)
    return with_prediction(spec, decide_prediction(spec.family, None, v_parameterization, None,
                                                   stored=spec.prediction_type))


def read_model_components(path, model_config=None, v2=None, v_parameterization=None, sdxl=None,
                          allow_pickle=False):
    """ModelComponents of a single file or a diffusers folder; every problem is one UserError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        spec = folder_spec(path, model_config, v2, v_parameterization, sdxl)
        return ModelComponents(path, spec, read_diffusers_components(path, spec, allow_pickle))
    tensors, metadata, global_step = read_single_file(path, allow_pickle)
    spec = detect_spec(tensors, path=path, metadata=metadata, model_config=model_config, v2=v2,
                       v_parameterization=v_parameterization, sdxl=sdxl, global_step=global_step)
    components, unexpected, extras = split_single_file(tensors, spec)
    if unexpected:
        raise UserError(f"{path} does not fit the {spec.name} ({spec.family}) model: {len(unexpected)} unexpected "
                        f"key(s), e.g. {', '.join(list(unexpected)[:5])}")
    return ModelComponents(path, spec, components, tensors, metadata, extras["logit_scale"])


def cast_floats(tensors, save_dtype):
    """Floating tensors in the save precision (fp32 | fp16 | bf16; None keeps them); others unchanged."""
    if save_dtype is None:
        return tensors
    if save_dtype not in SAVE_DTYPES:
        raise UserError(f"--save_precision {save_dtype!r} is not supported; expected one of "
                        f"{', '.join(sorted(SAVE_DTYPES))}")
    target = SAVE_DTYPES[save_dtype]
    out = {}
    for name, array in tensors.items():
        if not np.issubdtype(array.dtype, np.floating):
            out[name] = array
        elif target == "bf16":
            out[name] = Bf16Tensor.from_float32(array)
        else:
            out[name] = array.astype(target, copy=False)  # (a full model must not be copied twice)
    return out


def check_checkpoint_path(path, option="--save_to"):
    if not os.fspath(path).lower().endswith(CHECKPOINT_EXTENSIONS):
        raise UserError(f"{option} {path}: a checkpoint is saved as .safetensors or .ckpt")


def write_checkpoint(path, tensors, spec, metadata=None, save_dtype=None):
    """Write single-file tensors atomically: `.safetensors` (metadata + our spec, so it reloads without
    guessing) or `.ckpt` ({"state_dict": ...}, torch.save-compatible, no metadata)."""
    path = os.fspath(path)
    check_checkpoint_path(path)
    tensors = cast_floats(tensors, save_dtype)
    if path.lower().endswith(".ckpt"):
        from ..formats.torch_zip import write_torch_file

        write_torch_file(path, {"state_dict": tensors})
        return path
    merged = {str(k): str(v) for k, v in (metadata or {}).items()}
    merged.update(spec_to_metadata(spec))
    write_safetensors(path, tensors, merged)
    return path
