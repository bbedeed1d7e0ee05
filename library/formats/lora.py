"""kohya LoRA files: write (keys, save precision, ss_*/modelspec metadata, sshs hashes) and read any common layout.

Written files hold only `<name>.lora_down.weight`, `<name>.lora_up.weight` and a 0-dim `<name>.alpha` per module
(diffusers refuses the whole file when one stray key is present). Hashes are kohya's: `sshs_model_hash` is the
sha256 of the data region of a serialization that carries only the `ss_*` metadata (the data region does not
depend on metadata), `sshs_legacy_hash` the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB of
that serialization.

Read: kohya keys; PEFT part names (`lora_A`/`lora_B`) under kohya names; diffusers files (`unet.`,
`text_encoder.`, `text_encoder_2.` prefixes with PEFT or the older `processor.to_q_lora.down` names). Everything
comes back as kohya keys `<lora_name>.lora_down.weight/.lora_up.weight/.alpha`, where diffusers paths become
diffusers-style kohya names (`lora_unet_down_blocks_...`), which the network resolves for SDXL too.
"""
import datetime
import hashlib
import json
import os

import numpy as np

from ..errors import UserError
from .embeddings import modelspec_metadata
from .safetensors_io import Bf16Tensor, _header_bytes, _ordered, data_region_sha256, read_safetensors, \
    write_safetensors

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
PART_SUFFIXES = {".lora_down.weight": ".lora_down.weight", ".lora_up.weight": ".lora_up.weight",
                 ".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight",
                 ".lora.down.weight": ".lora_down.weight", ".lora.up.weight": ".lora_up.weight",
                 ".alpha": ".alpha",
                 # older diffusers attention-processor names: `...to_q_lora.down.weight`, `...lora_linear_layer.up...`
                 ".down.weight": ".lora_down.weight", ".up.weight": ".lora_up.weight"}
# LyCORIS and other module types, by the start of the part after the module name (kohya-style keys)
UNSUPPORTED_PARTS = {"lora_mid": "LoCon/CP (lora_mid)", "hada_": "LoHa", "lokr_": "LoKr", "dora_scale": "DoRA",
                     "oft_": "OFT", "diff": "full-difference", "ia3": "IA3", "w_norm": "norm", "a1.": "GLoRA"}
DIFFUSERS_COMPONENTS = {"unet.": "lora_unet", "text_encoder.": "lora_te", "text_encoder_2.": "lora_te2"}
PICKLE_EXTENSIONS = (".pt", ".ckpt", ".bin")
SAVE_PRECISIONS = {None: None, "float": None, "fp32": None, "fp16": "fp16", "bf16": "bf16"}
MINIMAL_METADATA_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                         "ss_network_alpha", "ss_network_args")
BASE_MODEL_VERSIONS = {("sd1", False): "sd_v1", ("sd1", True): "sd_v1_v", ("sd2", False): "sd_v2",
                       ("sd2", True): "sd_v2_v", ("sdxl", False): "sdxl_base_v1-0", ("sdxl", True): "sdxl_base_v1-0"}



class UnsupportedModuleTypes(UserError):
    """A LoRA file holding LyCORIS (or other) module types; `kinds` names them (e.g. "LoHa")."""

    def __init__(self, message, kinds):
        super().__init__(message)
        self.kinds = kinds

# ----------------------------------------------------------------------------------------------- hashes


def serialize(tensors, metadata):
    """The exact bytes safetensors writes for these tensors and metadata (as kohya's hashing re-serializes)."""
    ordered = _ordered(tensors)
    return _header_bytes(ordered, metadata) + b"".join(array.tobytes() for _, (_, array) in ordered)


def lora_hashes(tensors, metadata):
    """kohya's precalculate_safetensors_hashes: (sshs_model_hash, sshs_legacy_hash)."""
    training_only = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    model_hash = data_region_sha256(tensors)
    raw = serialize(tensors, training_only)
    legacy_hash = hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def file_addnet_hash(path):
    """A1111's LoRA hash of a file: sha256 after the safetensors header (whole file for other formats)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if path.lower().endswith(".safetensors"):
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_hashes(path):
    """(ss_sd_model_hash, ss_new_sd_model_hash): A1111's legacy 8-hex hash and the full sha256 of a model file.

    kohya's placeholders: "NOFILE" for a missing path, "IsADirectory" for a diffusers folder."""
    path = os.fspath(path) if path is not None else ""
    if os.path.isdir(path):
        return "IsADirectory", "IsADirectory"
    if not os.path.isfile(path):
        return "NOFILE", "NOFILE"
    full = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            full.update(chunk)
    return legacy, full.hexdigest()

# ----------------------------------------------------------------------------------------------- metadata


def _as_metadata_string(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def base_model_version(family, v_parameterization=False):
    return BASE_MODEL_VERSIONS[(family, bool(v_parameterization))]


def lora_metadata(values, minimal=False):
    """ss_* metadata strings from a dict the trainer fills (keys with or without the `ss_` prefix).

    Dicts/lists become JSON (ss_datasets, ss_tag_frequency, ss_network_args...), everything else str(value) as
    kohya writes it. minimal: only kohya's --no_metadata set."""
    metadata = {}
    for key, value in values.items():
        key = key if key.startswith("ss_") else f"ss_{key}"
        if minimal and key not in MINIMAL_METADATA_KEYS:
            continue
        metadata[key] = _as_metadata_string(value)
    return metadata


def lora_modelspec(family, title=None, resolution=512, prediction_type="epsilon", clip_skip=None, date=None,
                   implementation_version=None, extra=None):
    """SAI model-spec for a LoRA: architecture `<base>/lora`; implementation `diffusers` for SD1/SD2 LoRAs."""
    date = date or datetime.datetime.now()
    if title is None:
        title = f"LoRA@{date.strftime('%Y-%m-%d-%H-%M-%S') if not isinstance(date, str) else date}"
    metadata = modelspec_metadata(family, title, resolution, prediction_type=prediction_type, clip_skip=clip_skip,
                                  date=date, implementation_version=implementation_version, extra=extra)
    base = metadata["modelspec.architecture"].rsplit("/", 1)[0]
    metadata["modelspec.architecture"] = f"{base}/lora"
    if family != "sdxl":
        metadata["modelspec.implementation"] = "diffusers"
    return metadata

# ----------------------------------------------------------------------------------------------- write


def _cast(array, save_precision):
    array = np.asarray(array, dtype=np.float32)
    if save_precision not in SAVE_PRECISIONS:
        raise UserError(f"--save_precision must be one of fp32, fp16, bf16 (or float), got {save_precision!r}")
    precision = SAVE_PRECISIONS[save_precision]
    if precision == "fp16":
        return array.astype(np.float16)
    if precision == "bf16":  # (from_float32 makes 0-dim alphas 1-D; keep the shape)
        return Bf16Tensor(Bf16Tensor.from_float32(array).bits.reshape(array.shape))
    return array


def _check_keys(tensors):
    bad = [k for k in tensors if not (k.startswith(KOHYA_PREFIXES)
                                      and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")))]
    if bad:
        raise ValueError(f"not kohya LoRA keys: {bad[:5]}")


def save_lora(path, tensors, metadata=None, save_precision=None):
    """Write a kohya LoRA file atomically; returns the metadata written (with sshs hashes for safetensors).

    `.safetensors` (metadata + hashes) or `.pt`/`.ckpt` (torch.save-compatible dict, no metadata, as kohya)."""
    path = os.fspath(path)
    _check_keys(tensors)
    cast = {k: _cast(v, save_precision) for k, v in tensors.items()}
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        metadata = dict(metadata or {})
        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = lora_hashes(cast, metadata)
        write_safetensors(path, cast, metadata)
        return metadata
    if extension in (".pt", ".ckpt"):
        from .torch_zip import write_torch_file

        write_torch_file(path, cast)
        return {}
    raise UserError(f"cannot save a LoRA as {path}: use .safetensors, .pt or .ckpt (--save_model_as)")

# ----------------------------------------------------------------------------------------------- read


def _read_pickle(path):
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a pickle file and reading it needs PyTorch; convert it to .safetensors") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file the safe loader refuses is a bad LoRA file for the user
        raise UserError(f"cannot read the LoRA file {path}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"LoRA file {path} does not hold a dict of tensors")
    return {k: v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)
            for k, v in data.items()}


def read_lora_file(path, allow_pickle=False):
    """(tensors in kohya keys, metadata) from a LoRA file of any common layout. Raises UserError on problems."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"LoRA file {path} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        tensors, metadata = read_safetensors(path)
    elif extension in PICKLE_EXTENSIONS:
        if not allow_pickle:
            raise UserError(f"{path} is a pickle file, which can run arbitrary code when loaded. If you trust it, "
                            "pass --allow_unsafe_pickle; or convert it to .safetensors")
        tensors, metadata = _read_pickle(path), {}
    else:
        raise UserError(f"LoRA file {path}: unsupported extension {extension!r} (expected .safetensors, .pt, .ckpt)")
    return normalize_lora_keys(tensors, metadata, source=f"LoRA file {path}"), metadata


def _split_part(key):
    for suffix, part in PART_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None, None


def _diffusers_module_name(module, has_second_encoder):
    """`unet.down_blocks.0...to_q` -> `lora_unet_down_blocks_0_..._to_q` (also the older processor names)."""
    for prefix, lora_prefix in DIFFUSERS_COMPONENTS.items():
        if module.startswith(prefix):
            path = module[len(prefix):]
            if lora_prefix == "lora_te" and has_second_encoder:
                lora_prefix = "lora_te1"
            break
    else:
        return None
    path = path.replace(".processor.", ".")
    for old, new in (("to_out_lora", "to_out.0"), ("to_q_lora", "to_q"), ("to_k_lora", "to_k"),
                     ("to_v_lora", "to_v"), (".lora_linear_layer", "")):
        if path.endswith(old):
            path = path[: -len(old)] + new
    return f"{lora_prefix}_{path.replace('.', '_')}"


def _adapter_alphas(metadata):
    """diffusers' `lora_adapter_metadata` (PEFT LoraConfig per component) -> {component prefix: (alpha, pattern)}."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    found = {}
    for prefix in ("unet", "text_encoder", "text_encoder_2"):
        if f"{prefix}.lora_alpha" in config:
            found[prefix + "."] = (config[f"{prefix}.lora_alpha"], config.get(f"{prefix}.alpha_pattern") or {})
    return found


def normalize_lora_keys(tensors, metadata=None, source="LoRA file"):
    """Rename every key to `<kohya name>.lora_down.weight | .lora_up.weight | .alpha`; refuse anything else."""
    unsupported = {}
    stray = []
    for key in tensors:
        if key.startswith("bundle_emb."):
            unsupported.setdefault("bundled embeddings (bundle_emb.*)", key)
            continue
        if not key.startswith(KOHYA_PREFIXES):
            continue
        part = key.split(".", 1)[1] if "." in key else ""
        for marker, kind in UNSUPPORTED_PARTS.items():
            if part.startswith(marker) or (marker == "dora_scale" and key.endswith("dora_scale")):
                unsupported.setdefault(kind, key)
    if unsupported:
        kinds = ", ".join(f"{kind} (e.g. {key})" for kind, key in unsupported.items())
        raise UnsupportedModuleTypes(f"{source} holds module types this loader does not support: {kinds}. Only "
                                     "LoRA (lora_down/lora_up or lora_A/lora_B with alpha) is supported",
                                     list(unsupported))
    has_second_encoder = any(k.startswith("text_encoder_2.") for k in tensors)
    alphas = _adapter_alphas(metadata)
    out = {}
    for key, value in tensors.items():
        module, part = _split_part(key)
        if module is None:
            stray.append(key)
            continue
        name = module if module.startswith(KOHYA_PREFIXES) else _diffusers_module_name(module, has_second_encoder)
        if name is None:
            stray.append(key)
            continue
        out[name + part] = value
        if part == ".lora_down.weight" and not module.startswith(KOHYA_PREFIXES):
            for prefix, (alpha, pattern) in alphas.items():
                if module.startswith(prefix) and name + ".alpha" not in out:
                    path = module[len(prefix):]
                    out[name + ".alpha"] = np.array(pattern.get(path, alpha), dtype=np.float32)
    if stray:
        raise UserError(f"{source} has {len(stray)} key(s) that are not LoRA weights, e.g. "
                        f"{', '.join(sorted(stray)[:5])} (expected <module>.lora_down.weight / .lora_up.weight / "
                        ".alpha with lora_unet_/lora_te_ names, or diffusers unet./text_encoder. names)")
    if not out:
        raise UserError(f"{source} holds no LoRA weights")
    _check_pairs(out, source)
    return out


def _check_pairs(tensors, source):
    downs = {k[: -len(".lora_down.weight")] for k in tensors if k.endswith(".lora_down.weight")}
    ups = {k[: -len(".lora_up.weight")] for k in tensors if k.endswith(".lora_up.weight")}
    unpaired = sorted(downs ^ ups)
    if unpaired:
        raise UserError(f"{source}: {len(unpaired)} module(s) lack their lora_down or lora_up weight, e.g. "
                        f"{', '.join(unpaired[:3])}")
