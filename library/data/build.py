"""Entry point the trainers call: parsed arguments (or a Blueprint) -> DatasetGroup."""
import logging

from ..config.blueprint import generate_blueprint
from ..config.params import Blueprint
from ..errors import UserError
from .dataset import ImageDataset
from .group import DatasetGroup
from .items import items_for_dataset

log = logging.getLogger("sdms.data")


def build_dataset_group(source, *, tokenize=None, seed=0, caption_hook=None, split="train",
                        support_dropout=False):
    """`source`: an argparse Namespace (`--dataset_config` or folder mode) or a Blueprint.
    `tokenize(captions) -> list[np.ndarray]` (one (B, 77*k) int32 array per tokenizer) fills `input_ids`;
    `caption_hook(caption, rng) -> caption` runs after kohya's caption processing (token strings, templates).
    `split`: "train" or "validation" (validation_split of each non-reg subset)."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    blueprint = source if isinstance(source, Blueprint) else generate_blueprint(source,
                                                                               support_dropout=support_dropout)
    datasets = []
    for params in blueprint.datasets:
        for subset in params.subsets:
            if subset.face_crop_aug_range is not None and params.enable_bucket:
                log.warning("%s: face_crop_aug_range is ignored when enable_bucket is on (as in kohya)",
                            subset.source)
        items, loaded = items_for_dataset(params, split=split, seed=seed)
        if not items and split == "validation":
            continue
        # a dataset of reg subsets only registers nothing (items_for_dataset warned) but stays in the group,
        # as in kohya: its subsets and reg images still count in the metadata
        datasets.append(ImageDataset(params, items, tokenize=tokenize, seed=seed, caption_hook=caption_hook,
                                     loaded=loaded))
    if split == "train" and not any(dataset.items for dataset in datasets):
        raise UserError(f"{blueprint.config_file or 'the dataset options'}: no training images (only "
                        f"regularisation subsets). With --train_data_dir, that folder must be the PARENT of "
                        f"folders named '<repeats>_<class tokens>' that hold the images")
    return DatasetGroup(datasets, seed)


def verify_bucket_reso_steps(group, divisor):
    """kohya asserts bucket_reso_steps % 64 (SD1/2) or % 32 (SDXL); tiny test models run with smaller steps,
    so this warns instead of failing."""
    for dataset in group.datasets:
        params = dataset.params
        if params.enable_bucket and params.bucket_reso_steps % divisor:
            log.warning("%s: bucket_reso_steps %d is not divisible by %d, as real models of this family need",
                        params.source, params.bucket_reso_steps, divisor)


def check_sizes_fit_model(group, spec):
    """Every training size must divide down through the VAE and the UNet's levels, or the UNet's skip
    connections do not line up (the run would crash at its first step). Bucket sides are multiples of
    bucket_reso_steps; without buckets every image is resized to the resolution itself."""
    from ..sampling.checks import model_pixel_multiple

    multiple = model_pixel_multiple(spec)
    for dataset in group.datasets:
        params = dataset.params
        if params.enable_bucket:
            if params.bucket_reso_steps % multiple:
                raise UserError(f"{params.source}: bucket_reso_steps {params.bucket_reso_steps} must be a multiple "
                                f"of {multiple} for the {spec.name} model (its image sides must be divisible by "
                                f"{multiple})")
        elif any(side % multiple for side in params.resolution):
            raise UserError(f"{params.source}: resolution {params.resolution[0]}x{params.resolution[1]} must be a "
                            f"multiple of {multiple} on each side for the {spec.name} model (or use enable_bucket)")


def check_latent_caching_allowed(group):
    """kohya: "when caching latents, either color_aug or random_crop cannot be used". `group`: a DatasetGroup,
    or the Blueprint it is built from (checked before the model loads)."""
    for dataset in group.datasets:
        params = getattr(dataset, "params", dataset)
        for subset in params.subsets:
            if subset.face_crop_aug_range is not None and not params.enable_bucket:
                raise UserError(f"{subset.source}: face_crop_aug_range cannot be used with --cache_latents / "
                                f"--cache_latents_to_disk (each sample is a new crop); turn off one of them")
            for key in ("color_aug", "random_crop"):
                if getattr(subset, key):
                    raise UserError(f"{subset.source}: {key} cannot be used with --cache_latents / "
                                    f"--cache_latents_to_disk (the cached latents would freeze one variant); "
                                    f"turn off one of them")
