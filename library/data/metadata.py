"""Dataset facts kohya's train_network writes into LoRA metadata, as the strings it writes.

Two layouts, as kohya chooses by `--dataset_config`:
- with a dataset config: `ss_datasets` (one entry per `[[datasets]]`, its subsets inside), `ss_tag_frequency`,
  `ss_dataset_dirs` (non-reg subsets; a name seen before gets " (2)", " (3)"...);
- folder mode (`--train_data_dir` / `--in_json`): flat keys (`ss_resolution`, `ss_enable_bucket`,
  `ss_min_bucket_reso`, `ss_bucket_info`, `ss_dataset_dirs`, `ss_reg_dataset_dirs`, ...).
With bucketing off kohya's dataset holds no bucket settings: min/max reso and the bucket info are null
("None" as flat strings), `bucket_no_upscale` false.

Counts as kohya: `img_count` = images a subset loaded (reg ones too, used after balancing or not);
`ss_num_reg_images` = reg images x their subset's repeats before balancing. Tag frequency: the raw captions
of every loaded image once (no repeats), split on "," and lower-cased, per image folder; fine-tuning subsets
count their metadata tags, per metadata file name."""
import json
import os


def _subset_name(subset):
    if subset.kind == "finetuning":
        return os.path.basename(subset.metadata_file)
    return os.path.basename(subset.image_dir)


def _count_tags(per_dir, text):
    for tag in text.split(","):
        tag = tag.strip()
        if tag:
            tag = tag.lower()
            per_dir[tag] = per_dir.get(tag, 0) + 1


def tag_frequency(dataset):
    frequency = {}
    for subset, items in dataset.loaded:
        per_dir = frequency.setdefault(_subset_name(subset), {})
        for item in items:
            text = item.tags if subset.kind == "finetuning" else item.caption
            if text:
                _count_tags(per_dir, text)
    return frequency


def _bucketing(dataset):
    """kohya keeps bucket settings only when bucketing is on."""
    params = dataset.params
    if not params.enable_bucket:
        return {"min_bucket_reso": None, "max_bucket_reso": None, "bucket_no_upscale": False, "bucket_info": None}
    info = {"buckets": {i: {"resolution": list(reso), "count": count}
                        for i, (reso, count) in enumerate(dataset.bucket_table())},
            "mean_img_ar_error": dataset.mean_ar_error}
    return {"min_bucket_reso": params.min_bucket_reso, "max_bucket_reso": params.max_bucket_reso,
            "bucket_no_upscale": bool(params.bucket_no_upscale), "bucket_info": info}


def _subset_entry(subset, items, is_dreambooth):
    entry = {
        "img_count": len(items), "num_repeats": subset.num_repeats,
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
    elif subset.metadata_file:
        entry["metadata_file"] = os.path.basename(subset.metadata_file)
    else:  # a ControlNet-style subset (masked loss); kohya's writer has no branch for it and fails
        entry["conditioning_data_dir"] = os.path.basename(os.path.normpath(subset.conditioning_data_dir))
    return entry


def dataset_metadata(dataset):
    """One `ss_datasets` entry."""
    params = dataset.params
    is_dreambooth = params.kind == "dreambooth"
    bucketing = _bucketing(dataset)
    return {
        "is_dreambooth": is_dreambooth, "batch_size_per_device": params.batch_size,
        "num_train_images": dataset.num_train_images, "num_reg_images": dataset.num_reg_images,
        "resolution": list(params.resolution), "enable_bucket": bool(params.enable_bucket),
        "min_bucket_reso": bucketing["min_bucket_reso"], "max_bucket_reso": bucketing["max_bucket_reso"],
        "tag_frequency": tag_frequency(dataset), "bucket_info": bucketing["bucket_info"],
        "resize_interpolation": params.resize_interpolation,
        "subsets": [_subset_entry(subset, items, is_dreambooth) for subset, items in dataset.loaded],
    }


def _unique(name, taken):
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name} ({n})"
        n += 1
    return candidate


def _config_mode(group):
    datasets, frequency, dirs = [], {}, {}
    for dataset in group.datasets:
        datasets.append(dataset_metadata(dataset))
        for subset, items in dataset.loaded:
            if subset.kind == "dreambooth" and subset.is_reg:
                continue  # kohya does not merge reg folders into ss_dataset_dirs
            dirs[_unique(_subset_name(subset), dirs)] = {"n_repeats": subset.num_repeats, "img_count": len(items)}
        for name, tags in tag_frequency(dataset).items():
            frequency.setdefault(name, tags)  # a folder used by several datasets counts once (the first)
    return {"ss_datasets": json.dumps(datasets), "ss_tag_frequency": json.dumps(frequency),
            "ss_dataset_dirs": json.dumps(dirs)}


def _folder_mode(group, args, total_batch_size):
    (dataset,) = group.datasets  # folder mode makes exactly one dataset
    dirs, reg_dirs = {}, {}
    for subset, items in dataset.loaded:
        target = reg_dirs if subset.is_reg else dirs
        target[_subset_name(subset)] = {"n_repeats": subset.num_repeats, "img_count": len(items)}
    bucketing = _bucketing(dataset)
    values = {
        "ss_batch_size_per_device": args.train_batch_size, "ss_total_batch_size": total_batch_size,
        "ss_resolution": tuple(dataset.params.resolution), "ss_color_aug": bool(args.color_aug),
        "ss_flip_aug": bool(args.flip_aug), "ss_random_crop": bool(args.random_crop),
        "ss_shuffle_caption": bool(args.shuffle_caption), "ss_enable_bucket": bool(dataset.params.enable_bucket),
        "ss_bucket_no_upscale": bucketing["bucket_no_upscale"], "ss_min_bucket_reso": bucketing["min_bucket_reso"],
        "ss_max_bucket_reso": bucketing["max_bucket_reso"], "ss_keep_tokens": args.keep_tokens,
        "ss_dataset_dirs": json.dumps(dirs), "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(tag_frequency(dataset)),
        "ss_bucket_info": json.dumps(bucketing["bucket_info"]),
    }
    return values


def training_metadata(group, args=None, total_batch_size=None):
    """The dataset `ss_*` keys as strings, ready for safetensors metadata. `args`: the training arguments
    (None or a `--dataset_config` run: the dataset-config layout); total_batch_size = batch size x workers x
    gradient accumulation steps (folder mode's ss_total_batch_size)."""
    values = {"ss_num_train_images": group.num_train_images, "ss_num_reg_images": group.num_reg_images}
    if args is None or getattr(args, "dataset_config", None):
        values.update(_config_mode(group))
    else:
        values.update(_folder_mode(group, args, total_batch_size))
    return {key: str(value) for key, value in values.items()}
