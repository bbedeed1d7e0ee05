"""LoRA files for the tools: read as modules (LyCORIS refused with a clear word), and the metadata kohya's
resize / merge / extract scripts write (`ss_*` minimum, SAI model-spec unless --no_metadata, sshs hashes)."""
import datetime
import os

from ..errors import UserError
from ..formats.lora import UnsupportedModuleTypes, lora_metadata, lora_modelspec, read_lora_file
from ..formats.safetensors_io import read_header
from .family import describe, family_from_keys, family_from_metadata
from .lowrank import split_modules

NETWORK_MODULE = "networks.lora"
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
LYCORIS_NOTE = ("LyCORIS modules (LoCon with lora_mid, LoHa, LoKr, DoRA, ...) cannot be merged or resized yet: "
                "they come with LyCORIS support (issue 17); plain LoRA files (lora_down/lora_up) work")
RESOLUTIONS = {"sdxl": 1024}


def read_lora_modules(path, allow_pickle=False):
    """({module name: LoRAWeights}, metadata, family or None) of a LoRA file; UserError on anything else."""
    try:
        tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
    except UnsupportedModuleTypes as e:
        raise UserError(f"{e}. {LYCORIS_NOTE}") from e
    family = family_from_metadata(metadata) or family_from_keys(tensors)
    return split_modules(tensors, source=f"LoRA file {path}"), metadata, family


def check_same_family(sources):
    """sources: [(path, family or None)]; a UserError when two files are for different model families."""
    known = [(path, family) for path, family in sources if family]
    for path, family in known[1:]:
        if family != known[0][1]:
            raise UserError(f"{known[0][0]} is a LoRA for {describe(known[0][1])} but {path} is for "
                            f"{describe(family)}; only LoRAs of one model family merge")
    return known[0][1] if known else None


def check_save_path(path, option="--save_to"):
    if not path:
        raise UserError(f"{option} is required: the file to write (.safetensors, .pt or .ckpt)")
    if not os.fspath(path).lower().endswith(LORA_EXTENSIONS):
        raise UserError(f"{option} {path}: a LoRA is saved as .safetensors, .pt or .ckpt")


def title_of(path):
    """kohya's build_merged_from: a file's modelspec.title, else its file name without extension."""
    if os.fspath(path).lower().endswith(".safetensors") and os.path.isfile(path):
        title = read_header(path)[1].get("modelspec.title")
        if title:
            return title
    return os.path.splitext(os.path.basename(path))[0]


def _common(values):
    """kohya: the value when all modules agree, else "Dynamic"."""
    values = set(values)
    return str(next(iter(values))) if len(values) == 1 else "Dynamic"


def dims_and_alphas(modules):
    """(ss_network_dim, ss_network_alpha) strings of modules (kohya: "Dynamic" when they differ)."""
    return _common(m.rank for m in modules.values()), _common(float(m.alpha) for m in modules.values())


def first_value(metadatas, key):
    return next((m[key] for m in metadatas if m and m.get(key) is not None), None)


def minimum_metadata(source_metadatas, dim, alpha, network_args=None):
    """kohya's build_minimum_network_metadata: module, dim, alpha, and ss_v2 / ss_base_model_version /
    ss_network_args when known (the first input that has them)."""
    values = {"network_module": NETWORK_MODULE, "network_dim": dim, "network_alpha": alpha}
    for key in ("ss_v2", "ss_base_model_version"):
        value = first_value(source_metadatas, key)
        if value is not None:
            values[key] = value
    if network_args is not None:
        values["network_args"] = network_args
    return lora_metadata(values)


def lora_spec_metadata(family, save_to, source_metadatas=(), merged_from=None, v_parameterization=None):
    """SAI model-spec for a tool's output LoRA: title = the output file name, kohya's resolution default,
    prediction type from the inputs (SD2 without a record: v, as kohya assumes)."""
    from ..training.model_spec import implementation_version

    family = family or "sd1"
    stated = first_value(source_metadatas, "modelspec.prediction_type")
    if v_parameterization is None:
        v_parameterization = stated == "v" if stated else family == "sd2"
    resolution = RESOLUTIONS.get(family, 768 if family == "sd2" and v_parameterization else 512)
    title = os.path.splitext(os.path.basename(save_to))[0]
    return lora_modelspec(family, title=title, resolution=resolution,
                          prediction_type="v_prediction" if v_parameterization else "epsilon",
                          date=datetime.datetime.now().replace(microsecond=0),
                          implementation_version=implementation_version(),
                          extra={"merged_from": merged_from} if merged_from else None)
