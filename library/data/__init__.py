"""Data pipeline: subsets -> items, captions, buckets, images, batches, latent cache, --debug_dataset.

Trainers call `build_dataset_group(args, tokenize=..., seed=..., caption_hook=..., support_dropout=...)`, then
`group.set_epoch(e)` (e = completed epochs, from 0), `len(group)`, `group[i]` -> batch dict
(docs/ARCHITECTURE.md item 9),
optionally `group.shard(rank, world)`, `cache_latents(group, encode, ...)` and `print_debug_dataset(group)`."""
from .buckets import BucketSelector, get_crop_ltrb, make_bucket_resolutions
from .build import build_dataset_group, check_latent_caching_allowed, verify_bucket_reso_steps
from .captions import process_caption, read_caption_file
from .dataset import ImageDataset
from .debug import print_debug_dataset
from .group import DatasetGroup
from .latent_cache import cache_latents, latent_cache_path
from .metadata import training_metadata

__all__ = [
    "BucketSelector", "DatasetGroup", "ImageDataset", "build_dataset_group", "cache_latents",
    "check_latent_caching_allowed", "get_crop_ltrb", "latent_cache_path", "make_bucket_resolutions",
    "print_debug_dataset", "process_caption", "read_caption_file", "training_metadata",
    "verify_bucket_reso_steps",
]
