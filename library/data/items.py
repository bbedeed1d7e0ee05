"""Subsets -> image items (one per image, carrying its repeat count), kohya's DreamBooth/fine-tuning rules.

- DreamBooth: images directly in `image_dir`; caption from `<image stem><caption_extension>` (UTF-8, first line
  unless wildcards), else `class_tokens`; `cache_info` keeps captions and sizes in `metadata_cache.json`.
- Fine-tuning: `metadata_file` .json `{key: {caption, tags, image_size}}` or .jsonl (`image_path` per line);
  tags are appended to the caption after `caption_separator` exactly as kohya joins them (no added space).
- ControlNet-style (with --masked_loss): a DreamBooth-like subset whose `conditioning_data_dir` holds one image
  per training image, matched by file stem (kohya's ControlNetDataset); it becomes the loss mask.
- Regularisation balancing: reg images are registered round-robin and their repeats grow until the reg total
  covers sum(train images x repeats); reg images beyond that are unused (as kohya). A dataset with no train
  images registers no reg image (kohya: nothing to balance against).
- `items_for_dataset` also returns every subset's loaded items before balancing: kohya's `img_count`,
  `num_reg_images` and tag frequency count those.
- Validation split: each non-reg subset's images shuffled with `validation_seed`, the first ceil(n*(1-split))
  train, the rest validate; reg subsets never validate."""
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from typing import Optional

from ..config.images_ext import IMAGE_EXTENSIONS
from ..config.loader import read_text
from ..config.params import KIND_CONTROLNET, KIND_DREAMBOOTH, KIND_FINETUNING, SubsetParams
from ..errors import UserError
from ..fileio import atomic_write
from .captions import read_caption_file
from .face_crop import face_box_from_name
from .images import image_size, list_images

log = logging.getLogger("sdms.data")
CACHE_INFO_FILE = "metadata_cache.json"


@dataclass
class ImageItem:
    key: str
    path: str
    caption: str
    subset: SubsetParams
    num_repeats: int
    is_reg: bool
    size: tuple  # original (width, height)
    tags: Optional[str] = None  # fine-tuning metadata tags (what kohya's ss_tag_frequency counts there)
    bucket_reso: Optional[tuple] = None
    resized_size: Optional[tuple] = None
    cache: dict = field(default_factory=dict)  # cached latents etc. (see latent_cache.py)
    conditioning_path: Optional[str] = None  # ControlNet-style subsets: the image whose R channel is the mask


def _load_cache_info(folder):
    path = os.path.join(folder, CACHE_INFO_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        return json.loads(read_text(path, "cache_info file"))
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; rebuilding it", path)
        return {}


def _save_cache_info(folder, entries):
    with atomic_write(os.path.join(folder, CACHE_INFO_FILE)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries, f, ensure_ascii=False, indent=1)


def _read_caption(path, subset):
    """The caption file's text, None when there is no file; an empty file is a mistake (kohya asserts too)."""
    caption = read_caption_file(path, subset.enable_wildcard)
    if caption is None and os.path.isfile(path):
        raise UserError(f"{subset.source}: caption file {path} is empty; write the caption in it, or delete it "
                        "to train that image with the subset's class_tokens")
    return caption


def dreambooth_items(subset):
    paths = list_images(subset.image_dir)
    if not paths:
        hint = ""
        if any(os.path.isdir(os.path.join(subset.image_dir, n)) for n in os.listdir(subset.image_dir)):
            hint = " It has sub-folders: image_dir must be the folder that holds the images (no recursion)."
        raise UserError(f"{subset.source}: no images in image_dir {subset.image_dir} (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)}, any letter case).{hint}")
    cached = _load_cache_info(subset.image_dir) if subset.cache_info else {}
    items, missing, entries = [], [], {}
    for path in paths:
        entry = cached.get(path)
        if entry is not None and "caption" in entry and "resolution" in entry:
            caption, size = entry["caption"], tuple(entry["resolution"])
        else:
            stem = os.path.splitext(path)[0]
            caption, size = _read_caption(stem + subset.caption_extension, subset), None
            if caption is None and subset.face_crop_aug_range is not None and face_box_from_name(path):
                # kohya: `name_cx_cy_w_h.png` may share `name.<caption_extension>`
                base = "_".join(stem.split("_")[:-4])
                caption = _read_caption(base + subset.caption_extension, subset)
        if caption is None:
            caption = subset.class_tokens
            if caption is None:
                missing.append(path)
                caption = ""
        size = size or image_size(path)
        entries[path] = {"caption": caption, "resolution": list(size)}
        items.append(ImageItem(path, path, caption, subset, subset.num_repeats, subset.is_reg, size))
    if missing:
        log.warning("%s: %d image(s) have no %s caption file and no class_tokens, trained with an empty "
                    "caption, e.g. %s", subset.source, len(missing), subset.caption_extension,
                    ", ".join(missing[:5]))
    if subset.cache_info and entries != cached:
        _save_cache_info(subset.image_dir, entries)
    return items


def controlnet_items(subset):
    """kohya's ControlNetDataset: DreamBooth items (captions from files) each paired with the image of the same
    stem in conditioning_data_dir; a missing or an unpaired conditioning image is an error, as in kohya."""
    if subset.random_crop:
        raise UserError(f"{subset.source}: random_crop cannot be used with conditioning_data_dir (the mask must "
                        "be cropped like its image; kohya refuses it too)")
    if not os.path.isdir(subset.conditioning_data_dir):
        raise UserError(f"{subset.source}: conditioning_data_dir {subset.conditioning_data_dir} is not a folder")
    items = dreambooth_items(subset)
    by_stem = {}
    for path in list_images(subset.conditioning_data_dir):
        by_stem.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    missing = []
    for item in items:
        stem = os.path.splitext(os.path.basename(item.path))[0]
        item.conditioning_path = by_stem.pop(stem, None)
        if item.conditioning_path is None:
            missing.append(os.path.basename(item.path))
    if missing:
        raise UserError(f"{subset.source}: no conditioning image (same file name, any image extension) in "
                        f"{subset.conditioning_data_dir} for {len(missing)} image(s): {', '.join(missing[:5])}")
    if by_stem:
        extra = sorted(os.path.basename(p) for p in by_stem.values())
        raise UserError(f"{subset.source}: {len(extra)} conditioning image(s) in {subset.conditioning_data_dir} "
                        f"match no image in {subset.image_dir}: {', '.join(extra[:5])} (kohya refuses them too)")
    return items


def _find_image(key, image_dir):
    bases = [key] if os.path.isabs(key) else []
    if image_dir:
        bases.append(os.path.join(image_dir, key))
    for base in bases:
        for candidate in [base] + [base + ext for ext in IMAGE_EXTENSIONS]:
            if os.path.isfile(candidate):
                return candidate
    return None


def _read_metadata(path):
    text = read_text(path, "metadata_file")
    try:
        if path.lower().endswith(".jsonl"):
            records = {}
            for line in text.splitlines():
                if line.strip():
                    record = json.loads(line)
                    records[record["image_path"]] = record
            return records
        return json.loads(text)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"metadata_file {path}: not valid {'JSONL with image_path' if path.endswith('l') else 'JSON'}"
                        f" ({e})") from e


def _join_caption_and_tags(caption, tags, subset):
    """kohya's FineTuningDataset: `caption + caption_separator + tags`, nothing added in between; with
    wildcards the tags (made one line) follow every non-empty caption line. -> (caption, tags counted)."""
    caption = caption or ""
    separator = subset.caption_separator
    if subset.enable_wildcard:
        if tags is None:
            return caption, None
        tags = tags.replace("\n", separator)
        lines = [line for line in caption.split("\n") if line.strip() != ""]
        return "\n".join(f"{line}{separator}{tags}" for line in lines), tags
    if not tags:
        return caption, None
    return (caption + separator if caption else "") + tags, tags


def finetuning_items(subset):
    metadata = _read_metadata(subset.metadata_file)
    items = []
    for key, record in metadata.items():
        path = _find_image(key, subset.image_dir)
        if path is None:
            log.warning("%s: image for metadata key %r not found (image_dir %s); skipped", subset.source, key,
                        subset.image_dir)
            continue
        caption, tags = _join_caption_and_tags(record.get("caption"), record.get("tags"), subset)
        size = tuple(record["image_size"]) if record.get("image_size") else image_size(path)
        items.append(ImageItem(key, path, caption, subset, subset.num_repeats, False, size, tags=tags))
    if not items:
        raise UserError(f"{subset.source}: metadata_file {subset.metadata_file} lists no image that exists")
    return items


def split_for_validation(items, split, seed, want_validation):
    if split <= 0:
        return [] if want_validation else items
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    cut = math.ceil(len(shuffled) * (1 - split))
    return shuffled[cut:] if want_validation else shuffled[:cut]


def balance_regularisation(train_items, reg_items):
    """Register reg items round-robin, growing their repeats until they cover the train images x repeats."""
    target = sum(item.num_repeats for item in train_items)
    used, total, first_round = [], 0, True
    if not reg_items or not target:
        return used
    while total < target:
        for item in reg_items:
            if first_round:
                used.append(item)
                total += item.num_repeats
            else:
                item.num_repeats += 1
                total += 1
            if total >= target:
                break
        first_round = False
    if len(used) < len(reg_items):
        log.warning("%d regularisation image(s) are not used: there are more than the training images need",
                    len(reg_items) - len(used))
    return used


def items_for_dataset(params, split="train", seed=0):
    """(items, loaded) of one DatasetParams: the items to train on, after the validation split and the reg
    balancing; and [(subset, its items before balancing)] for every subset (kohya's counts)."""
    train, reg, loaded = [], [], []
    validation_seed = params.validation_seed if params.validation_seed is not None else seed
    for subset in params.subsets:
        if subset.kind == KIND_DREAMBOOTH:
            items = dreambooth_items(subset)
        elif subset.kind == KIND_FINETUNING:
            items = finetuning_items(subset)
        elif subset.kind == KIND_CONTROLNET:
            if subset.face_crop_aug_range is not None and not params.enable_bucket:
                raise UserError(f"{subset.source}: face_crop_aug_range cannot be used with conditioning_data_dir "
                                "(the face crop would not apply to the mask)")
            items = controlnet_items(subset)
        else:
            raise UserError(f"{subset.source}: subsets of kind {subset.kind!r} are not supported by this trainer")
        if subset.is_reg:
            items = [] if split == "validation" else items  # reg subsets never validate
            reg += items
        else:
            items = split_for_validation(items, params.validation_split, validation_seed, split == "validation")
            train += items
        loaded.append((subset, items))
    if split == "validation":
        return train, loaded
    if reg and not train:
        log.warning("%s: only regularisation subsets and no training images: none of its %d reg image(s) is "
                    "used (as kohya, reg images are balanced against the same dataset's training images)",
                    params.source, len(reg))
    return train + balance_regularisation(train, reg), loaded
