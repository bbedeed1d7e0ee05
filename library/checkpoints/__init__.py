"""Single-file (LDM/SGM) and diffusers-folder checkpoint read/write, and model version detection.

Public entry points: `load_model(path, ...) -> ModelBundle`, `save_single_file(bundle, path, metadata)`,
`ensure_tiny_checkpoint(spec_name, path, seed)`, `detect_spec(tensors, ...)`, and the UNet key maps
`diffusers_to_ldm_unet_key` / `ldm_to_diffusers_unet_key` (LoRA names).

The names are imported on first use, so the numpy-only modules (layout, detect, key maps) load without
MindSpore (the tools/ scripts start in a fraction of a second).
"""
import importlib

_EXPORTS = {"detect_spec": ".detect", "load_model": ".loader", "save_single_file": ".loader",
            "ensure_tiny_checkpoint": ".tiny", "diffusers_to_ldm_unet_key": ".unet_keys",
            "ldm_to_diffusers_unet_key": ".unet_keys"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
