"""Single-file (LDM/SGM) and diffusers-folder checkpoint read/write, and model version detection.

Public entry points: `load_model(path, ...) -> ModelBundle`, `save_single_file(bundle, path, metadata)`,
`ensure_tiny_checkpoint(spec_name, path, seed)`, `detect_spec(tensors, ...)`, and the UNet key maps
`diffusers_to_ldm_unet_key` / `ldm_to_diffusers_unet_key` (LoRA names).
"""
from .detect import detect_spec
from .loader import load_model, save_single_file
from .tiny import ensure_tiny_checkpoint
from .unet_keys import diffusers_to_ldm_unet_key, ldm_to_diffusers_unet_key

__all__ = ["detect_spec", "load_model", "save_single_file", "ensure_tiny_checkpoint",
           "diffusers_to_ldm_unet_key", "ldm_to_diffusers_unet_key"]
