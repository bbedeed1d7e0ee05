"""DreamBooth prior preservation: fill the regularisation folders with class images made by the base model.

When a regularisation (is_reg) subset holds fewer than `--num_class_images` images, the missing ones are
generated from `--class_prompt` (or the subset's class tokens) before training, in the same run, and saved
into that folder with a caption file, so a rerun finds them and generates nothing (mindone/diffusers
DreamBooth behaviour, on kohya's dataset layout).
"""
import os

import numpy as np

from ..config.images_ext import IMAGE_EXTENSIONS
from ..errors import UserError

CLASS_IMAGE_PREFIX = "class_"


def count_images(folder):
    try:
        return sum(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in os.listdir(folder))
    except OSError:
        return 0


def reg_subsets(args):
    """The is_reg subsets of the dataset the trainer will build (TOML or folder mode), with an image_dir."""
    from ..config.blueprint import generate_blueprint

    blueprint = generate_blueprint(args, support_dropout=True)
    return [subset for dataset in blueprint.datasets for subset in dataset.subsets
            if subset.is_reg and subset.image_dir], blueprint


def plan_class_images(args, default_resolution=512):
    """[(subset, prompt, how many to make, resolution (w, h))] for the reg folders that are short of images."""
    if not args.num_class_images:
        return []
    subsets, blueprint = reg_subsets(args)
    if not subsets:
        if args.class_prompt:
            raise UserError("--class_prompt / --num_class_images need a regularisation subset to fill: add one "
                            "with is_reg = true to the --dataset_config, or use --reg_data_dir PARENT with a "
                            "'<repeats>_<class>' sub-folder")
        return []
    resolutions = {id(s): d.resolution for d in blueprint.datasets for s in d.subsets}
    plan = []
    for subset in subsets:
        missing = args.num_class_images - count_images(subset.image_dir)
        if missing <= 0:
            continue
        prompt = args.class_prompt or subset.class_tokens
        if not prompt:
            raise UserError(f"{subset.source}: {subset.image_dir} has {count_images(subset.image_dir)} of "
                            f"--num_class_images {args.num_class_images} images; pass --class_prompt "
                            f"(e.g. \"a photo of a dog\") to generate the rest")
        resolution = resolutions.get(id(subset)) or (default_resolution, default_resolution)
        plan.append((subset, prompt, missing, tuple(resolution)))
    return plan


def _next_free_index(folder):
    taken = {os.path.splitext(n)[0] for n in os.listdir(folder)} if os.path.isdir(folder) else set()
    index = 0
    while f"{CLASS_IMAGE_PREFIX}{index:05d}" in taken:
        index += 1
    return index


def generate_class_images(args, bundle, plan, progress=True):
    """Make the planned images with the base model (no LoRA applied yet). Returns the paths written."""
    from PIL import Image
    from tqdm import tqdm

    from ..fileio import atomic_write
    from ..sampling.pipeline import Pipeline, SamplingOptions, to_uint8

    if not plan:
        return []
    pipeline = Pipeline(bundle)
    written = []
    total = sum(count for _, _, count, _ in plan)
    bar = tqdm(total=total, desc="generating class images", disable=not progress)
    seed = args.seed if args.seed is not None else 0
    batch_size = max(1, int(args.sample_batch_size))
    for subset, prompt, count, (width, height) in plan:
        os.makedirs(subset.image_dir, exist_ok=True)
        options = SamplingOptions(width=width, height=height, steps=args.class_sample_steps,
                                  scale=args.class_guidance_scale, sampler=args.sample_sampler,
                                  clip_skip=args.clip_skip)
        index = _next_free_index(subset.image_dir)
        made = 0
        while made < count:
            n = min(batch_size, count - made)
            seeds = [seed + index + i for i in range(n)]
            images = to_uint8(pipeline([prompt] * n, [""] * n, seeds, options))
            for image in images:
                stem = os.path.join(subset.image_dir, f"{CLASS_IMAGE_PREFIX}{index:05d}")
                with atomic_write(stem + ".png") as tmp:
                    Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
                with atomic_write(stem + subset.caption_extension) as tmp:
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write(prompt + "\n")
                written.append(stem + ".png")
                index += 1
            made += n
            bar.update(n)
    bar.close()
    return written
