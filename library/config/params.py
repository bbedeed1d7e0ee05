"""Resolved dataset/subset parameters (what the data pipeline consumes) and their defaults.

The defaults are kohya's dataclass defaults; the command line's own defaults (for example
`caption_extension=".caption"`) come in one level above them (see `blueprint.py`)."""
from dataclasses import dataclass, field
from typing import Optional

KIND_DREAMBOOTH = "dreambooth"
KIND_FINETUNING = "finetuning"
KIND_CONTROLNET = "controlnet"


@dataclass
class SubsetParams:
    kind: str = KIND_DREAMBOOTH
    source: str = ""  # where it was defined, e.g. "dataset.toml: datasets[0].subsets[1]" (for messages)
    image_dir: Optional[str] = None
    metadata_file: Optional[str] = None
    conditioning_data_dir: Optional[str] = None
    is_reg: bool = False
    alpha_mask: bool = False
    num_repeats: int = 1
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: Optional[str] = None
    secondary_separator: Optional[str] = None
    enable_wildcard: bool = False
    color_aug: bool = False
    flip_aug: bool = False
    face_crop_aug_range: Optional[tuple] = None
    random_crop: bool = False
    caption_prefix: Optional[str] = None
    caption_suffix: Optional[str] = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    custom_attributes: dict = field(default_factory=dict)
    resize_interpolation: Optional[str] = None
    caption_extension: str = ".caption"
    class_tokens: Optional[str] = None
    cache_info: bool = False


@dataclass
class DatasetParams:
    kind: str = KIND_DREAMBOOTH
    source: str = ""
    resolution: Optional[tuple] = None  # (width, height)
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    network_multiplier: float = 1.0
    validation_split: float = 0.0
    validation_seed: Optional[int] = None
    resize_interpolation: Optional[str] = None
    # argparse-only values, copied into every dataset for convenience
    debug_dataset: bool = False
    max_token_length: Optional[int] = None
    prior_loss_weight: float = 1.0
    subsets: list = field(default_factory=list)


@dataclass
class Blueprint:
    """Everything needed to build the datasets: one DatasetParams per `[[datasets]]` (or the folder-mode one)."""

    datasets: list
    config_file: Optional[str] = None  # None in folder mode


SUBSET_FIELDS = [f for f in SubsetParams.__dataclass_fields__ if f not in ("kind", "source")]
DATASET_FIELDS = [f for f in DatasetParams.__dataclass_fields__ if f not in ("kind", "source", "subsets")]
ARGPARSE_ONLY_KEYS = ("debug_dataset", "max_token_length", "prior_loss_weight")
# argparse option name -> config key (kohya renames these two)
ARGPARSE_TO_CONFIG = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}
