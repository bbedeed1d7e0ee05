"""Load a Stable Diffusion model (single file or diffusers folder) into a ModelBundle; save a single file.

Everything a user can get wrong (path, format, layout, family, damaged file) ends in one UserError that
names the file and, for weights that do not fit, the missing/unexpected keys (first few + counts).
"""
import os

import numpy as np

from ..errors import UserError
from ..formats.safetensors_io import write_safetensors
from ..models.weights import load_state_dict, state_dict
from .components import cast_floats, folder_spec, read_single_file
from .detect import detect_spec
from .diffusers_folder import TOKENIZER_FOLDERS, read_component, read_diffusers_components, read_vae_folder
from .layout import VAE_PREFIX, join_single_file, split_single_file
from .spec_metadata import modelspec_metadata, spec_to_metadata
from .unet_keys import diffusers_to_ldm_unet_key
from .vae_keys import ldm_to_diffusers_vae, normalize_legacy_vae_names

SHOWN_KEYS = 5


def _check_exists(path):
    if not os.path.exists(path):
        hint = ""
        if "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
            hint = " (downloading from the Hugging Face Hub is not supported: pass a local file or folder)"
        raise UserError(f"checkpoint {path} does not exist{hint}")


def load_model(path, model_config=None, v2=None, v_parameterization=None, sdxl=None, allow_pickle=False,
               vae=None):
    """ModelBundle with the weights of a single-file checkpoint or a diffusers folder.

    model_config: one of our named specs or a diffusers folder (config.json files) for files whose shapes
    match no known architecture. vae: a VAE file or folder that replaces the model's VAE.
    """
    from ..models.bundle import build_bundle
    from ..models.layers import lazy_parameters

    path = os.fspath(path)
    _check_exists(path)
    if os.path.isdir(path):
        spec = folder_spec(path, model_config, v2, v_parameterization, sdxl)
        components, unexpected = read_diffusers_components(path, spec, allow_pickle), []
    else:
        tensors, metadata, global_step = read_single_file(path, allow_pickle)
        spec = detect_spec(tensors, path=path, metadata=metadata, model_config=model_config, v2=v2,
                           v_parameterization=v_parameterization, sdxl=sdxl, global_step=global_step)
        components, unexpected, _ = split_single_file(tensors, spec)
        del tensors
    if vae is not None:
        components["vae"] = read_vae(vae, spec, allow_pickle)
        unexpected = [name for name in unexpected if not name.startswith(VAE_PREFIX)]
    with lazy_parameters():  # every weight is loaded below: skip the random initialisation
        bundle = build_bundle(spec, with_tokenizers=not os.path.isdir(path))
    if os.path.isdir(path):
        bundle.tokenizers = _folder_tokenizers(path, spec)
    load_components(bundle, components, unexpected, source=path, from_folder=os.path.isdir(path))
    return bundle


def _folder_tokenizers(path, spec):
    """The folder's tokenizer/ and tokenizer_2/ where present, else the bundled CLIP tokenizers."""
    from ..models.bundle import build_tokenizers
    from ..text.tokenizer import load_tokenizer_from_folder

    defaults = build_tokenizers(spec)
    tokenizers = []
    for index, default in enumerate(defaults):
        folder = os.path.join(path, TOKENIZER_FOLDERS[index])
        tokenizers.append(load_tokenizer_from_folder(folder) if os.path.isdir(folder) else default)
    return tokenizers


def read_vae(vae_path, spec, allow_pickle=False):
    """diffusers-named VAE tensors from a VAE single file (LDM names, with or without `first_stage_model.`),
    a diffusers-named VAE file, a diffusers VAE folder (config.json + weights) or a whole diffusers folder."""
    vae_path = os.fspath(vae_path)
    _check_exists(vae_path)
    if os.path.isdir(vae_path):
        if os.path.isdir(os.path.join(vae_path, "vae")):  # a whole diffusers folder: take its VAE
            return read_component(vae_path, "vae", allow_pickle)
        return read_vae_folder(vae_path, allow_pickle)
    tensors, _, _ = read_single_file(vae_path, allow_pickle)
    if any(name.startswith("encoder.down_blocks.") for name in tensors):  # already diffusers names
        return normalize_legacy_vae_names(tensors)
    bare = {(name[len(VAE_PREFIX):] if name.startswith(VAE_PREFIX) else name): value
            for name, value in tensors.items()}
    converted, unmapped = ldm_to_diffusers_vae(bare, spec.vae)
    ignorable = [n for n in unmapped if n.startswith(("loss.", "model_ema.")) or "." not in n]
    unmapped = [n for n in unmapped if n not in ignorable]
    if not converted or unmapped:
        raise UserError(f"--vae {vae_path}: not a VAE checkpoint for this model: {len(unmapped)} key(s) that are "
                        f"not VAE weights, e.g. {', '.join(unmapped[:SHOWN_KEYS]) or '(no VAE keys at all)'}")
    return converted


def _fit_text_names(tensors, cell_names):
    """Our text Cells use `text_model.`-prefixed names; adapt if a Cell ever names them without it."""
    if any(n.startswith("text_model.") for n in cell_names):
        return tensors
    return {n[len("text_model."):] if n.startswith("text_model.") else n: v for n, v in tensors.items()}


def _describe(label, kind, names, to_file_name=None):
    shown = [f"{n} ({to_file_name(n)})" if to_file_name else n for n in names[:SHOWN_KEYS]]
    return f"{label}: {len(names)} {kind} key(s), e.g. {', '.join(shown)}"


def load_components(bundle, components, unexpected=(), source="checkpoint", from_folder=False):
    """Copy component tensors into the bundle's Cells after checking every name and shape (one UserError)."""
    spec = bundle.spec
    parts = [("UNet", bundle.unet, components["unet"]), ("VAE", bundle.vae, components["vae"])]
    for index, encoder in enumerate(bundle.text_encoders):
        tensors = components["text_encoders"][index] if index < len(components["text_encoders"]) else {}
        parts.append((f"text encoder {index + 1}", encoder, tensors))
    problems = []
    fitted = []
    for label, cell, tensors in parts:
        expected = {n: tuple(p.shape) for n, p in cell.parameters_and_names() if ".adapters." not in f".{n}"}
        if label.startswith("text encoder"):
            tensors = _fit_text_names(tensors, expected)
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        mismatched = [f"{n}: file {tuple(np.shape(tensors[n]))} vs model {expected[n]}"
                      for n in sorted(set(expected) & set(tensors)) if tuple(np.shape(tensors[n])) != expected[n]]
        # UNet names are also shown as the single file spells them (its block indices differ).
        to_file = (lambda n: "model.diffusion_model." + diffusers_to_ldm_unet_key(n, spec.unet)) \
            if label == "UNet" and not from_folder else None
        if missing:
            problems.append(_describe(label, "missing", missing, to_file))
        if extra:
            problems.append(_describe(label, "unexpected", extra, to_file))
        if mismatched:
            problems.append(f"{label}: {len(mismatched)} shape mismatch(es), e.g. {'; '.join(mismatched[:3])}")
        fitted.append((label, cell, tensors))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the file, e.g. "
                        f"{', '.join(list(unexpected)[:SHOWN_KEYS])}")
    if problems:
        raise UserError(f"{source} does not fit the {spec.name} ({spec.family}) model:\n  " + "\n  ".join(problems)
                        + "\n  (wrong or damaged file? for an unusual architecture pass --model_config)")
    for label, cell, tensors in fitted:
        load_state_dict(cell, tensors, strict=True, source=f"{source} ({label})")


def bundle_components(bundle):
    """Per-component {name: np.ndarray} of a bundle, without adapters or textual-inversion rows."""
    def weights(cell):
        return {n: v for n, v in state_dict(cell).items() if not n.endswith(".new_rows")}
    return {"unet": weights(bundle.unet), "vae": weights(bundle.vae),
            "text_encoders": [weights(e) for e in bundle.text_encoders]}


def save_single_file(bundle, path, metadata=None, save_dtype=None):
    """Write the bundle as one LDM/SGM-layout `.safetensors` (atomic), with our spec in the metadata."""
    tensors = join_single_file(bundle_components(bundle), bundle.spec)
    merged = modelspec_metadata(bundle.spec)
    merged.update({str(k): str(v) for k, v in (metadata or {}).items()})
    merged.update(spec_to_metadata(bundle.spec))
    write_safetensors(path, cast_floats(tensors, save_dtype), merged)
    return path
