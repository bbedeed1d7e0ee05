"""MindSpore Cells for SD1.x / SD2.x / SDXL, named as the diffusers/transformers state dicts."""
