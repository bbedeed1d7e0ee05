"""PNG files of generated images: A1111 `parameters` text, kohya's text chunks and file names, atomic writes."""
import hashlib
import os
import time

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..diffusion.samplers import resolve_sampler
from ..fileio import atomic_write

# A1111's display names for the samplers we run.
A1111_SAMPLER_NAMES = {
    "ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun",
    "dpm_2": "DPM2", "dpm_2_a": "DPM2 a", "dpmsolver": "DPM-Solver 2M", "dpmsolver++": "DPM++ 2M",
}


def sampler_label(name, karras=False):
    label = A1111_SAMPLER_NAMES[resolve_sampler(name)]
    return label + " Karras" if karras and resolve_sampler(name) not in ("ddim", "pndm") else label


def file_sha256(path, length=None):
    """sha256 of a file (hex; first `length` characters). A1111 shows 10 for models, 12 for LoRAs/TIs."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length] if length else digest.hexdigest()


def a1111_parameters(prompt, negative_prompt, steps, sampler, scale, seed, width, height, karras=False,
                     model_hash=None, model_name=None, clip_skip=None, lora_hashes=None, ti_hashes=None,
                     extra=None):
    """The `parameters` text A1111 writes (and its PNG Info tab / civitai read back)."""
    fields = [("Steps", steps), ("Sampler", sampler_label(sampler, karras)), ("CFG scale", f"{scale:g}"),
              ("Seed", seed), ("Size", f"{width}x{height}")]
    if model_hash:
        fields.append(("Model hash", model_hash))
    if model_name:
        fields.append(("Model", model_name))
    if clip_skip and clip_skip > 1:
        fields.append(("Clip skip", clip_skip))
    if lora_hashes:
        fields.append(("Lora hashes", '"' + ", ".join(f"{k}: {v}" for k, v in lora_hashes.items()) + '"'))
    if ti_hashes:
        fields.append(("TI hashes", '"' + ", ".join(f"{k}: {v}" for k, v in ti_hashes.items()) + '"'))
    fields += list((extra or {}).items())
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def save_png(path, image, text_chunks):
    """Write a uint8 (H, W, 3) image with tEXt chunks, atomically."""
    info = PngInfo()
    for key, value in text_chunks.items():
        if value is not None:
            info.add_text(key, str(value))
    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return path


def timestamp():
    return time.strftime("%Y%m%d%H%M%S", time.localtime())


def gen_img_file_name(outdir, index, seed, stamp=None, sequential=None, filename=None):
    """kohya gen_img names: im_{YYYYmmddHHMMSS}_{i:03d}_{seed}.png, im_{n:06d}.png, or `--f name`.png."""
    if filename:
        name = filename if filename.lower().endswith(".png") else filename + ".png"
    elif sequential is not None:
        name = f"im_{sequential:06d}.png"
    else:
        name = f"im_{stamp or timestamp()}_{index:03d}_{seed}.png"
    return os.path.join(outdir, name)


def sample_file_name(output_dir, prompt_index, seed, output_name=None, epoch=None, steps=None, stamp=None):
    """kohya training samples: sample/{output_name_}{e000001|000100}_{idx:02d}_{YYYYmmddHHMMSS}[_{seed}].png."""
    counter = f"e{epoch:06d}" if epoch is not None else f"{steps or 0:06d}"
    prefix = f"{output_name}_" if output_name else ""
    seed_suffix = "" if seed is None else f"_{seed}"
    name = f"{prefix}{counter}_{prompt_index:02d}_{stamp or timestamp()}{seed_suffix}.png"
    return os.path.join(output_dir, "sample", name)
