"""One `[[datasets]]` entry as batches: items in aspect-ratio buckets, whole batches drawn from one bucket.

Contract (docs/ARCHITECTURE.md item 9): `len(ds)` = batches per epoch, `ds[i]` -> batch dict, `ds.set_epoch(e)`
with e = completed epochs (0 for the first, the training loop's index; kohya's 1-based epoch is e + 1 and is
what `caption_dropout_every_n_epochs` counts). The bucket contents and the batch order are shuffled from
`seed + e + 1` (kohya's `seed + current_epoch`) only, and every per-sample random choice (caption shuffle,
flip, crop, colour) from (seed, epoch, batch index, position in the global batch), so a run resumed at epoch e,
batch i sees exactly the batch an uninterrupted run sees, whatever was read before.

Sharding: `ds.shard(rank, world)` returns a view whose batches are rank's slice of every global batch of
`batch_size * world` items; a short last batch of a bucket is filled up by repeating its first items, so every
rank gets the same batch count and shapes."""
import copy
import random

import numpy as np

from .buckets import BucketSelector
from .captions import process_caption
from .face_crop import face_box_from_name, face_crop
from .images import color_aug, crop_like, load_image, resize, to_chw_tensor, trim_and_resize


def conditioning_image(item, reso, flipped):
    """A ControlNet-style subset's conditioning image, (3, H, W) in [-1, 1] as kohya's batch
    `conditioning_images`, resized, cropped and flipped exactly like its image (random crop and face crop are
    refused for these subsets, so the image's crop is the centred one). An image of another size is first
    resized to its image's size."""
    rgb = load_image(item.conditioning_path)
    interpolation = item.subset.resize_interpolation
    if (rgb.shape[1], rgb.shape[0]) != tuple(item.size):
        rgb = resize(rgb, item.size, interpolation)
    rgb = trim_and_resize(rgb, reso, item.resized_size, None, False, interpolation)[0]
    if flipped:
        rgb = rgb[:, ::-1]
    return to_chw_tensor(rgb)


def _selector(params):
    if params.enable_bucket:
        return BucketSelector(params.bucket_no_upscale, params.resolution, params.min_bucket_reso,
                              params.max_bucket_reso, params.bucket_reso_steps)
    return BucketSelector(False, params.resolution, predefined=[tuple(params.resolution)])


class ImageDataset:
    def __init__(self, params, items, *, tokenize=None, seed=0, caption_hook=None, loaded=None):
        """loaded: [(subset, its items before reg balancing)] (items_for_dataset); default: from `items`."""
        self.params = params
        self.items = items
        if loaded is None:
            loaded = [(s, [i for i in items if i.subset is s]) for s in params.subsets]
        self.loaded = loaded
        self.tokenize = tokenize
        self.seed = int(seed) if seed is not None else 0  # no --seed: still deterministic
        self.caption_hook = caption_hook
        self.epoch = 0
        self.step = 0
        self.max_train_steps = None
        self.rank, self.world = 0, 1
        self._epoch_cache = None
        self.mean_ar_error = self._assign_buckets()

    # ----- buckets -----
    def _assign_buckets(self):
        selector = _selector(self.params)
        errors = []
        for item in self.items:
            width, height = item.size
            item.bucket_reso, item.resized_size, error = selector.select(width, height)
            errors.append(abs(error))
            target = tuple(self.params.resolution)
            if not self.params.enable_bucket and item.subset.random_crop and width >= target[0] and \
                    height >= target[1]:
                item.resized_size = (width, height)  # kohya: random window of the full-size image
        self.buckets = {}
        for index, item in enumerate(self.items):
            self.buckets.setdefault(item.bucket_reso, []).extend([index] * item.num_repeats)
        return float(np.mean(errors)) if errors else 0  # kohya: 0 (an int) when there is no image

    def bucket_table(self):
        """[(resolution (w, h), count with repeats)] sorted by resolution."""
        return [(reso, len(indices)) for reso, indices in sorted(self.buckets.items())]

    @property
    def num_train_images(self):
        return sum(item.num_repeats for item in self.items if not item.is_reg)

    @property
    def num_reg_images(self):
        """kohya: every loaded reg image x its subset's repeats, counted before balancing (used or not)."""
        return sum(subset.num_repeats * len(items) for subset, items in self.loaded if subset.is_reg)

    # ----- epochs, steps, shards -----
    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def set_step(self, step):
        self.step = int(step)

    def set_max_train_steps(self, max_train_steps):
        self.max_train_steps = max_train_steps

    def shard(self, rank, world):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        view = copy.copy(self)
        view.rank, view.world = int(rank), int(world)
        view._epoch_cache = None
        return view

    def _global_batches(self):
        if self._epoch_cache is not None and self._epoch_cache[0] == self.epoch:
            return self._epoch_cache[1]
        rng = random.Random(self.seed + self.epoch + 1)
        size = self.params.batch_size * self.world
        batches = []
        for reso, indices in sorted(self.buckets.items()):
            indices = indices[:]
            rng.shuffle(indices)
            batches += [(reso, indices[start:start + size]) for start in range(0, len(indices), size)]
        rng.shuffle(batches)
        self._epoch_cache = (self.epoch, batches)
        return batches

    def __len__(self):
        return len(self._global_batches())

    def batch_plan(self, index):
        """(bucket resolution, [(global position, item)]) of this rank's part of batch `index`."""
        reso, indices = self._global_batches()[index]
        per_rank = self.params.batch_size
        if self.world > 1 and len(indices) < per_rank * self.world:
            indices = [indices[k % len(indices)] for k in range(per_rank * self.world)]
        start = self.rank * per_rank if self.world > 1 else 0
        chosen = indices[start:start + per_rank] if self.world > 1 else indices
        return reso, [(start + k, self.items[i]) for k, i in enumerate(chosen)]

    # ----- samples -----
    def _sample_rng(self, index, position):
        return random.Random(f"{self.seed}/{self.epoch}/{index}/{position}")

    def _load_sample(self, item, reso, rng):
        subset = item.subset
        caption = process_caption(subset, item.caption, rng, self.epoch + 1, self.step, self.max_train_steps)
        if self.caption_hook is not None:
            caption = self.caption_hook(caption, rng)
        flipped = bool(subset.flip_aug and rng.random() < 0.5)
        sample = {"caption": caption, "flipped": flipped}
        cache = item.cache
        if "latents" in cache:
            sample["latents"] = cache["latents_flipped"] if flipped else cache["latents"]
            original_size, crop_ltrb = cache["original_size"], cache["crop_ltrb"]
            alpha = cache.get("alpha_mask")
        else:
            rgb, alpha = load_image(item.path, with_alpha=True)
            interpolation = subset.resize_interpolation
            face = face_box_from_name(item.path) if self._face_crop(subset) else None
            if face is not None:
                # kohya: the face crop replaces resize + crop; the window is the whole conditioning image
                rgba = np.dstack([rgb, np.rint(alpha * 255).astype(np.uint8)])
                rgba = face_crop(rgba, reso, face, subset.face_crop_aug_range, rng, subset.random_crop,
                                 interpolation)
                rgb, alpha = np.ascontiguousarray(rgba[:, :, :3]), rgba[:, :, 3].astype(np.float32) / 255.0
                original_size, crop_ltrb = tuple(reso), (0, 0, reso[0], reso[1])
            else:
                rgb, original_size, crop_ltrb, offsets = trim_and_resize(
                    rgb, reso, item.resized_size, rng, subset.random_crop, interpolation)
                if subset.alpha_mask:
                    alpha = crop_like(alpha, reso, item.resized_size, offsets, interpolation)
            if subset.color_aug:
                rgb = color_aug(rgb, rng)
            if flipped:
                rgb = rgb[:, ::-1]
            sample["image"] = to_chw_tensor(rgb)
        if subset.alpha_mask and alpha is not None:
            sample["alpha_mask"] = alpha[:, ::-1].copy() if flipped else alpha
        if item.conditioning_path is not None:
            sample["conditioning_image"] = conditioning_image(item, reso, flipped)
        target_w = reso[0]
        left = target_w - crop_ltrb[2] if flipped else crop_ltrb[0]
        sample["crop_top_left"] = (int(crop_ltrb[1]), int(left))
        sample["original_size_hw"] = (int(original_size[1]), int(original_size[0]))
        return sample

    def _face_crop(self, subset):
        return subset.face_crop_aug_range is not None and not self.params.enable_bucket

    def __getitem__(self, index):
        if index < 0 or index >= len(self):
            raise IndexError(index)
        reso, plan = self.batch_plan(index)
        samples, items = [], []
        for position, item in plan:
            samples.append(self._load_sample(item, reso, self._sample_rng(index, position)))
            items.append(item)
        return self._collate(samples, items, reso)

    def _collate(self, samples, items, reso):
        count = len(samples)
        captions = [s["caption"] for s in samples]
        batch = {
            "captions": captions,
            "input_ids": list(self.tokenize(captions)) if self.tokenize is not None else None,
            "loss_weights": np.array([self.params.prior_loss_weight if it.is_reg else 1.0 for it in items],
                                     np.float32),
            "original_sizes_hw": np.array([s["original_size_hw"] for s in samples], np.int32),
            "crop_top_lefts": np.array([s["crop_top_left"] for s in samples], np.int32),
            "target_sizes_hw": np.array([(reso[1], reso[0])] * count, np.int32),
            "flipped": np.array([s["flipped"] for s in samples], bool),
            "network_multipliers": np.full((count,), self.params.network_multiplier, np.float32),
            "image_keys": [it.key for it in items],
            "custom_attributes": [it.subset.custom_attributes for it in items],
        }
        if "latents" in samples[0]:
            batch["latents"] = np.stack([s["latents"] for s in samples]).astype(np.float32)
        else:
            batch["images"] = np.stack([s["image"] for s in samples]).astype(np.float32)
        if "conditioning_image" in samples[0]:  # a dataset is all ControlNet-style subsets or none
            batch["conditioning_images"] = np.stack([s["conditioning_image"] for s in samples]).astype(np.float32)
        if any(it.subset.alpha_mask for it in items):
            height, width = reso[1], reso[0]
            batch["alpha_masks"] = np.stack([s.get("alpha_mask", np.ones((height, width), np.float32))
                                             for s in samples]).astype(np.float32)
        return batch

