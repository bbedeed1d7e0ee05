"""The dataset config schema (kohya's ConfigSanitizer key groups), built with voluptuous.

Which keys are valid depends on the level (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`), on the subset
kind (DreamBooth / fine-tuning / ControlNet) and on the trainer: caption-dropout keys exist only for trainers
with `support_dropout=True` (LoRA), not for textual inversion, as in kohya.

Validators convert as they check (a scalar `resolution` becomes `(s, s)`, an int given for a float key becomes
a float: kohya would reject `network_multiplier = 1`, we accept it)."""
from voluptuous import Invalid, Required

RESIZE_INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")


def _describe(value):
    return f"{value!r} (a {type(value).__name__})"


def is_int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {_describe(value)}")
    return value


def is_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number, got {_describe(value)}")
    return float(value)


def is_int_or_float(value):
    """token_warmup_step: an int step, or a float < 1 meaning a fraction of max_train_steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number, got {_describe(value)}")
    return value


def is_bool(value):
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {_describe(value)}")
    return value


def is_str(value):
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {_describe(value)}")
    return value


def is_table(value):
    if not isinstance(value, dict):
        raise Invalid(f"expected a table (dict), got {_describe(value)}")
    return value


def is_resolution(value):
    """An int `512` or a pair `[512, 768]` (width, height) -> (w, h)."""
    if not isinstance(value, bool) and isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    raise Invalid(f"expected an integer or a list of two integers [width, height], got {_describe(value)}")


def is_float_pair(value):
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return tuple(float(v) for v in value)
    raise Invalid(f"expected a list of two numbers [low, high], got {_describe(value)}")


def is_interpolation(value):
    if not isinstance(value, str) or value not in RESIZE_INTERPOLATIONS:
        raise Invalid(f"expected one of {', '.join(RESIZE_INTERPOLATIONS)}, got {_describe(value)}")
    return value


SUBSET_ASCENDABLE = {
    "num_repeats": is_int,
    "shuffle_caption": is_bool,
    "caption_separator": is_str,
    "keep_tokens": is_int,
    "keep_tokens_separator": is_str,
    "secondary_separator": is_str,
    "enable_wildcard": is_bool,
    "color_aug": is_bool,
    "flip_aug": is_bool,
    "face_crop_aug_range": is_float_pair,
    "random_crop": is_bool,
    "caption_prefix": is_str,
    "caption_suffix": is_str,
    "token_warmup_min": is_int,
    "token_warmup_step": is_int_or_float,
    "custom_attributes": is_table,
    "resize_interpolation": is_interpolation,
}
DROPOUT_ASCENDABLE = {
    "caption_dropout_rate": is_number,
    "caption_dropout_every_n_epochs": is_int,
    "caption_tag_dropout_rate": is_number,
}
DREAMBOOTH_ASCENDABLE = {"caption_extension": is_str, "class_tokens": is_str, "cache_info": is_bool}
DREAMBOOTH_DISTINCT = {Required("image_dir"): is_str, "is_reg": is_bool, "alpha_mask": is_bool}
FINETUNING_DISTINCT = {Required("metadata_file"): is_str, "image_dir": is_str, "alpha_mask": is_bool}
CONTROLNET_ASCENDABLE = {"caption_extension": is_str, "cache_info": is_bool}
CONTROLNET_DISTINCT = {Required("image_dir"): is_str, Required("conditioning_data_dir"): is_str}
DATASET_ASCENDABLE = {
    "resolution": is_resolution,
    "batch_size": is_int,
    "enable_bucket": is_bool,
    "min_bucket_reso": is_int,
    "max_bucket_reso": is_int,
    "bucket_reso_steps": is_int,
    "bucket_no_upscale": is_bool,
    "network_multiplier": is_number,
    "validation_split": is_number,
    "validation_seed": is_int,
    "resize_interpolation": is_interpolation,
}


class SchemaSet:
    """Key tables per level for one trainer's capabilities."""

    def __init__(self, support_dreambooth=True, support_finetuning=True, support_controlnet=False,
                 support_dropout=False):
        self.support_dreambooth = support_dreambooth
        self.support_finetuning = support_finetuning
        self.support_controlnet = support_controlnet
        self.support_dropout = support_dropout

    def _ascendable(self, kind=None):
        keys = dict(SUBSET_ASCENDABLE)
        if self.support_dropout:
            keys.update(DROPOUT_ASCENDABLE)
        if kind in (None, "dreambooth") and self.support_dreambooth:
            keys.update(DREAMBOOTH_ASCENDABLE)
        if kind in (None, "controlnet") and self.support_controlnet:
            keys.update(CONTROLNET_ASCENDABLE)
        return keys

    def subset_keys(self, kind):
        keys = self._ascendable(kind)
        keys.update({"dreambooth": DREAMBOOTH_DISTINCT, "finetuning": FINETUNING_DISTINCT,
                     "controlnet": CONTROLNET_DISTINCT}[kind])
        return keys

    def dataset_keys(self, kind):
        keys = self._ascendable(kind)
        keys.update(DATASET_ASCENDABLE)
        keys["subsets"] = list  # validated piecewise by the sanitizer
        return keys

    def general_keys(self):
        keys = self._ascendable(None)
        keys.update(DATASET_ASCENDABLE)
        return keys

    def supported_kinds(self):
        kinds = []
        if self.support_dreambooth:
            kinds.append("dreambooth")
        if self.support_finetuning:
            kinds.append("finetuning")
        if self.support_controlnet:
            kinds.append("controlnet")
        return kinds


def plain_names(keys):
    """Key names of a schema dict (voluptuous `Required` markers unwrapped)."""
    return [getattr(k, "schema", k) for k in keys]
