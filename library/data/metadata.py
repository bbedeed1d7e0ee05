"""Dataset facts that kohya writes into LoRA metadata: `ss_datasets`, `ss_tag_frequency`, `ss_dataset_dirs`,
`ss_num_train_images`, `ss_num_reg_images` (JSON strings, values as kohya's train_network writes them).

Tag frequency counts the raw captions once per image (no repeats), split on "," and lower-cased, per image
folder (fine-tuning: per metadata file name). `img_count` counts the images a subset contributes (for a reg
subset: those used after balancing)."""
import json
import os
from collections import OrderedDict


def _subset_name(subset):
    if subset.kind == "finetuning":
        return os.path.basename(subset.metadata_file)
    return os.path.basename(subset.image_dir)


def tag_frequency(dataset):
    frequency = {}
    for item in dataset.items:
        per_dir = frequency.setdefault(_subset_name(item.subset), {})
        for tag in (item.caption or "").split(","):
            tag = tag.strip().lower()
            if tag:
                per_dir[tag] = per_dir.get(tag, 0) + 1
    return frequency


def bucket_info(dataset):
    return {"buckets": {i: {"resolution": list(reso), "count": count}
                        for i, (reso, count) in enumerate(dataset.bucket_table())},
            "mean_img_ar_error": dataset.mean_ar_error}


def _subset_counts(dataset):
    counts = OrderedDict()
    for item in dataset.items:
        counts[id(item.subset)] = counts.get(id(item.subset), 0) + 1
    return counts


def dataset_metadata(dataset):
    params = dataset.params
    is_dreambooth = params.kind == "dreambooth"
    counts = _subset_counts(dataset)
    subsets = []
    for subset in params.subsets:
        entry = {
            "img_count": counts.get(id(subset), 0), "num_repeats": subset.num_repeats,
            "color_aug": bool(subset.color_aug), "flip_aug": bool(subset.flip_aug),
            "random_crop": bool(subset.random_crop), "shuffle_caption": bool(subset.shuffle_caption),
            "keep_tokens": subset.keep_tokens, "keep_tokens_separator": subset.keep_tokens_separator,
            "secondary_separator": subset.secondary_separator, "enable_wildcard": bool(subset.enable_wildcard),
            "caption_prefix": subset.caption_prefix, "caption_suffix": subset.caption_suffix,
            "resize_interpolation": subset.resize_interpolation,
        }
        if subset.image_dir:
            entry["image_dir"] = os.path.basename(subset.image_dir)
        if is_dreambooth:
            entry["class_tokens"] = subset.class_tokens
            entry["is_reg"] = subset.is_reg
        else:
            entry["metadata_file"] = os.path.basename(subset.metadata_file)
        subsets.append(entry)
    return {
        "is_dreambooth": is_dreambooth, "batch_size_per_device": params.batch_size,
        "num_train_images": dataset.num_train_images, "num_reg_images": dataset.num_reg_images,
        "resolution": list(params.resolution), "enable_bucket": bool(params.enable_bucket),
        "min_bucket_reso": params.min_bucket_reso, "max_bucket_reso": params.max_bucket_reso,
        "tag_frequency": tag_frequency(dataset), "bucket_info": bucket_info(dataset),
        "resize_interpolation": params.resize_interpolation, "subsets": subsets,
    }


def dataset_dirs(group):
    """{folder or metadata file name: {"n_repeats", "img_count"}} over non-reg subsets, merged by name."""
    dirs = {}
    for dataset in group.datasets:
        counts = _subset_counts(dataset)
        for subset in dataset.params.subsets:
            if subset.is_reg:
                continue
            entry = dirs.setdefault(_subset_name(subset), {"n_repeats": 0, "img_count": 0})
            entry["n_repeats"] += subset.num_repeats
            entry["img_count"] += counts.get(id(subset), 0)
    return dirs


def training_metadata(group):
    """The `ss_*` dataset keys as strings, ready for safetensors metadata."""
    frequency = {}
    for dataset in group.datasets:
        for name, tags in tag_frequency(dataset).items():
            frequency.setdefault(name, tags)  # kohya keeps the first dataset's counts for a repeated folder
    return {
        "ss_num_train_images": str(group.num_train_images),
        "ss_num_reg_images": str(group.num_reg_images),
        "ss_datasets": json.dumps([dataset_metadata(d) for d in group.datasets]),
        "ss_tag_frequency": json.dumps(frequency),
        "ss_dataset_dirs": json.dumps(dataset_dirs(group)),
    }
