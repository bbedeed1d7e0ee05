"""Merge the config levels into resolved parameters, kohya's precedence:

    subset table > dataset table > [general] > command line (train_batch_size->batch_size,
    dataset_repeats->num_repeats) > dataclass default

A value counts when it is not None, so a command-line default that is not None (`--caption_extension` is
`.caption`) beats the dataclass default, and anything in the config beats the command line.

Relative paths in a config file (`image_dir`, `metadata_file`, `conditioning_data_dir`) are resolved against
the config file's folder first, then the current working directory."""
import logging
import os

from ..errors import UserError
from .folder_mode import user_config_from_args
from .loader import load_config_dict
from .params import ARGPARSE_ONLY_KEYS, ARGPARSE_TO_CONFIG, DATASET_FIELDS, KIND_CONTROLNET, SUBSET_FIELDS, \
    Blueprint, DatasetParams, SubsetParams
from .sanitizer import ConfigSanitizer

log = logging.getLogger("sdms.config")
PATH_KEYS = ("image_dir", "metadata_file", "conditioning_data_dir")


def _parse_pair(value, cast, option):
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (cast(value), cast(value))
    if isinstance(value, list):
        return tuple(cast(v) for v in value)
    try:
        parts = [cast(p) for p in str(value).split(",")]
    except ValueError as e:
        raise UserError(f"{option}: expected a number or 'a,b', got {value!r}") from e
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])


def argparse_values(args):
    """Command-line values under config key names (None where the option does not exist)."""
    values = {}
    if args is None:
        return values
    for name, value in vars(args).items():
        values[ARGPARSE_TO_CONFIG.get(name, name)] = value
    if values.get("resolution") is not None:
        values["resolution"] = _parse_pair(values["resolution"], int, "--resolution")
    if values.get("face_crop_aug_range") is not None:
        values["face_crop_aug_range"] = _parse_pair(values["face_crop_aug_range"], float, "--face_crop_aug_range")
    return values


def _first(name, levels, default):
    for level in levels:
        value = level.get(name)
        if value is not None:
            return value
    return default


def _resolve_path(value, base_dir, what):
    if os.path.isabs(value):
        candidates = [value]
    else:
        candidates = [os.path.join(base_dir, value)] if base_dir else []
        candidates.append(os.path.abspath(value))
    for candidate in candidates:
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    tried = " and ".join(dict.fromkeys(candidates))
    raise UserError(f"{what} = {value!r} not found (looked for {tried}); relative paths are resolved against "
                    f"the config file's folder first, then the current directory")


def _check_dataset(params, where):
    if params.resolution is None:
        raise UserError(f"{where}: resolution is not set; give `resolution = 512` in [general] or [[datasets]], "
                        f"or --resolution 512")
    if params.batch_size < 1:
        raise UserError(f"{where}: batch_size must be >= 1, got {params.batch_size}")
    if not 0.0 <= params.validation_split < 1.0:
        # kohya warns and skips the split (and 1.0 leaves nothing to train): a wrong number is a mistake here
        raise UserError(f"{where}: validation_split must be >= 0 and < 1 (the fraction of each subset's images "
                        f"held out for validation), got {params.validation_split}")
    if not params.enable_bucket:
        return
    steps = params.bucket_reso_steps
    if steps < 1:
        raise UserError(f"{where}: bucket_reso_steps must be >= 1, got {steps}")
    if params.min_bucket_reso > params.max_bucket_reso:
        raise UserError(f"{where}: min_bucket_reso {params.min_bucket_reso} must be <= max_bucket_reso "
                        f"{params.max_bucket_reso}")
    # kohya adjusts and checks min/max_bucket_reso with bucket_no_upscale too, though they choose no bucket then
    if params.min_bucket_reso % steps:
        adjusted = params.min_bucket_reso - params.min_bucket_reso % steps
        log.warning("%s: min_bucket_reso %d is not a multiple of bucket_reso_steps %d; using %d", where,
                    params.min_bucket_reso, steps, adjusted)
        params.min_bucket_reso = adjusted
    if params.max_bucket_reso % steps:
        adjusted = params.max_bucket_reso + steps - params.max_bucket_reso % steps
        log.warning("%s: max_bucket_reso %d is not a multiple of bucket_reso_steps %d; using %d", where,
                    params.max_bucket_reso, steps, adjusted)
        params.max_bucket_reso = adjusted
    if min(params.resolution) < params.min_bucket_reso:
        raise UserError(f"{where}: min_bucket_reso {params.min_bucket_reso} must be <= the resolution "
                        f"{params.resolution}")
    if max(params.resolution) > params.max_bucket_reso:
        raise UserError(f"{where}: max_bucket_reso {params.max_bucket_reso} must be >= the resolution "
                        f"{params.resolution}")


def _make_subset(raw, dataset, general, cli, kind, base_dir, where):
    levels = [raw, dataset, general, cli]
    # subset-only keys (image_dir, is_reg, ...) cannot appear in dataset/general tables (the schema rejects
    # them there), but like kohya a command-line flag such as --alpha_mask still applies to every subset
    values = {name: _first(name, levels, getattr(SubsetParams, name, None)) for name in SUBSET_FIELDS
              if name not in ("custom_attributes",)}
    values["custom_attributes"] = dict(_first("custom_attributes", levels[:3], {}) or {})
    if values["resize_interpolation"] is None:
        values["resize_interpolation"] = _first("resize_interpolation", [dataset, general, cli], None)
    ext = values["caption_extension"]
    if ext and not ext.startswith("."):
        values["caption_extension"] = "." + ext
    for key in PATH_KEYS:
        if values.get(key):
            values[key] = _resolve_path(values[key], base_dir, f"{where}.{key}")
    if values["keep_tokens_separator"] == "":
        values["keep_tokens_separator"] = None
    if kind == KIND_CONTROLNET:
        values["alpha_mask"] = False  # kohya: a ControlNet subset's mask is its conditioning image, never alpha
    return SubsetParams(kind=kind, source=where, **values)


def _dedupe(subsets):
    seen = set()
    kept = []
    for subset in subsets:
        key = (subset.image_dir, subset.metadata_file, subset.conditioning_data_dir)
        if key in seen:
            log.warning("%s: same folder/metadata as an earlier subset of this dataset; ignored", subset.source)
            continue
        if subset.num_repeats < 1:
            log.warning("%s: num_repeats %d < 1; subset ignored", subset.source, subset.num_repeats)
            continue
        seen.add(key)
        kept.append(subset)
    return kept


def blueprint_from_user_config(config, args=None, *, config_file=None, support_dropout=False,
                               support_dreambooth=True, support_finetuning=True, support_controlnet=False):
    """Validate a user-config dict and resolve it against the command line into a Blueprint."""
    label = config_file or "(command-line folder mode)"
    sanitizer = ConfigSanitizer(support_dreambooth, support_finetuning, support_controlnet, support_dropout)
    clean = sanitizer.sanitize(config, label)
    cli = argparse_values(args)
    if not support_dropout:
        for key in ("caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate"):
            cli.pop(key, None)
    base_dir = os.path.dirname(os.path.abspath(config_file)) if config_file else None
    general = clean["general"]
    datasets = []
    for i, raw_dataset in enumerate(clean["datasets"]):
        where = f"{label}: datasets[{i}]" if config_file else "dataset"
        values = {name: _first(name, [raw_dataset, general, cli], getattr(DatasetParams, name, None))
                  for name in DATASET_FIELDS if name not in ARGPARSE_ONLY_KEYS}
        for name in ARGPARSE_ONLY_KEYS:
            values[name] = _first(name, [cli], getattr(DatasetParams, name))
        params = DatasetParams(kind=raw_dataset["_kind"], source=where, **values)
        params.prior_loss_weight = float(params.prior_loss_weight)
        _check_dataset(params, where)
        subsets = [
            _make_subset(raw, raw_dataset, general, cli, raw_dataset["_kind"], base_dir,
                         f"{where}.subsets[{j}]" if config_file else f"subset {raw.get('image_dir', j)}")
            for j, raw in enumerate(raw_dataset["subsets"])
        ]
        params.subsets = _dedupe(subsets)
        if not params.subsets:
            raise UserError(f"{where}: no subsets; add at least one [[datasets.subsets]] with image_dir")
        datasets.append(params)
    if not datasets:
        raise UserError(f"{label}: no [[datasets]] table; add one with at least one [[datasets.subsets]]")
    return Blueprint(datasets=datasets, config_file=config_file)


def generate_blueprint(args, *, support_dropout=False, support_dreambooth=True, support_finetuning=True,
                       support_controlnet=None):
    """From parsed training arguments: `--dataset_config` if given, else folder mode. ControlNet-style subsets
    (`conditioning_data_dir`, their images are loss masks) are accepted with --masked_loss, as kohya's trainers
    build their ConfigSanitizer with support_controlnet=args.masked_loss."""
    if support_controlnet is None:
        support_controlnet = bool(getattr(args, "masked_loss", False))
    config_file = getattr(args, "dataset_config", None)
    if config_file:
        ignored = [f"--{n}" for n in ("train_data_dir", "reg_data_dir", "in_json") if getattr(args, n, None)]
        if ignored:
            log.warning("--dataset_config is given, so %s %s ignored", ", ".join(ignored),
                        "is" if len(ignored) == 1 else "are")
        config = load_config_dict(config_file)
    else:
        config = user_config_from_args(args)
    return blueprint_from_user_config(config, args, config_file=config_file, support_dropout=support_dropout,
                                      support_dreambooth=support_dreambooth, support_finetuning=support_finetuning,
                                      support_controlnet=support_controlnet)
