"""Latent caching: encode each image once (in VAE batches, through a callback) and keep the latents in memory,
optionally also on disk next to the image as kohya names them: `<stem>_<WWWW>x<HHHH>_sd.npz` (`_sdxl.npz` for
SDXL), WWWW x HHHH = original image size, keys `latents`, `original_size` [w, h], `crop_ltrb`, and
`latents_flipped` with flip_aug (`alpha_mask` with alpha_mask).

Beyond kohya, the npz also stores `image_size`, `image_mtime` and `image_sha1`; a disk cache is reused only if its
latent size matches the bucket and the image bytes are unchanged (sha1), otherwise it is rebuilt (kohya's HEAD
only checks that the keys exist, so an edited image kept its stale latents, bmaltais/kohya_ss#1629). Legacy
`<stem>.npz` files carry no such proof and are not used. With `vae_id` (a fingerprint of the VAE encoder, see
`vae_fingerprint`) the npz records which encoder made it, and a cache made by another VAE (another model family
or a different --vae) is re-encoded with a log line instead of silently reused."""
import hashlib
import os

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write
from .build import check_latent_caching_allowed
from .images import crop_like, load_image, to_chw_tensor, trim_and_resize


def latent_cache_path(image_path, original_size, family="sd"):
    suffix = "sdxl" if family == "sdxl" else "sd"
    width, height = original_size
    return f"{os.path.splitext(image_path)[0]}_{width:04d}x{height:04d}_{suffix}.npz"


def file_sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_latent_hw(item, downscale):
    return item.bucket_reso[1] // downscale, item.bucket_reso[0] // downscale


def vae_fingerprint(vae):
    """sha1 of the VAE encoder's weights (`encoder.*`, `quant_conv.*`): what the cached latents depend on. A
    decoder-only fine-tune (e.g. ft-MSE) keeps the fingerprint, so its caches stay valid."""
    digest = hashlib.sha1()
    for name, param in sorted(vae.parameters_and_names(), key=lambda pair: pair[0]):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode("utf-8"))
            digest.update(np.ascontiguousarray(param.asnumpy(), np.float32).tobytes())
    return digest.hexdigest()


def _made_by_other_vae(data, vae_id):
    return vae_id is not None and str(data.get("vae_id", "")) != vae_id


def load_valid_npz(npz_path, item, downscale, skip_cache_check=False, vae_id=None):
    """The cache entries from `npz_path`, or None if it is missing, incomplete, of another size or stale, or
    (with `vae_id`) made by another VAE encoder."""
    if not os.path.isfile(npz_path):
        return None
    try:
        with np.load(npz_path) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError):
        return None
    needed = ["latents", "original_size", "crop_ltrb"]
    if item.subset.flip_aug:
        needed.append("latents_flipped")
    if item.subset.alpha_mask:
        needed.append("alpha_mask")
    if any(k not in data for k in needed):
        return None
    if tuple(data["latents"].shape[1:]) != _expected_latent_hw(item, downscale):
        return None
    if _made_by_other_vae(data, vae_id):
        return None
    if not skip_cache_check:
        if "image_sha1" not in data or str(data["image_sha1"]) != file_sha1(item.path):
            return None
    return _cache_entry(data)


def _cache_entry(data):
    entry = {"latents": data["latents"].astype(np.float32),
             "original_size": tuple(int(v) for v in data["original_size"]),
             "crop_ltrb": tuple(float(v) for v in data["crop_ltrb"])}
    if "latents_flipped" in data:
        entry["latents_flipped"] = data["latents_flipped"].astype(np.float32)
    if "alpha_mask" in data:
        entry["alpha_mask"] = data["alpha_mask"].astype(np.float32)
    return entry


def save_npz(npz_path, item, entry, vae_id=None):
    arrays = {"latents": entry["latents"], "original_size": np.array(entry["original_size"], np.int64),
              "crop_ltrb": np.array(entry["crop_ltrb"], np.float64),
              "image_size": np.array(item.size, np.int64),
              "image_mtime": np.array(os.stat(item.path).st_mtime_ns, np.int64),
              "image_sha1": np.array(file_sha1(item.path))}
    if vae_id is not None:
        arrays["vae_id"] = np.array(vae_id)
    for key in ("latents_flipped", "alpha_mask"):
        if key in entry:
            arrays[key] = entry[key]
    with atomic_write(npz_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _prepare(item):
    rgb, alpha = load_image(item.path, with_alpha=True)
    rgb, original_size, crop_ltrb, offsets = trim_and_resize(
        rgb, item.bucket_reso, item.resized_size, None, False, item.subset.resize_interpolation)
    if item.subset.alpha_mask:
        alpha = crop_like(alpha, item.bucket_reso, item.resized_size, offsets, item.subset.resize_interpolation)
    return to_chw_tensor(rgb), original_size, crop_ltrb, alpha


def _encode(encode, images, item_paths):
    latents = np.asarray(encode(images), dtype=np.float32)
    if latents.shape[0] != images.shape[0]:
        raise ValueError(f"encode returned {latents.shape[0]} latents for {images.shape[0]} images")
    for k in range(latents.shape[0]):
        if np.isnan(latents[k]).any():
            raise UserError(f"NaN detected in latents: {item_paths[k]} (try an fp32 VAE, e.g. --no_half_vae)")
    return latents


def cache_latents(group, encode, *, vae_batch_size=1, to_disk=False, family="sd", downscale=8,
                  skip_cache_check=False, vae_id=None, log=print):
    """Fill `item.cache` for every item of `group`. `encode(images (B,3,H,W) float32 in [-1,1]) -> (B,C,h,w)`
    unscaled latents. `vae_id`: the encoder's fingerprint, stored in and checked against disk caches.
    Returns {"reused": n, "rebuilt": n}."""
    check_latent_caching_allowed(group)
    todo, reused, other_vae = [], 0, []
    for item in group.items:
        if to_disk:
            npz_path = latent_cache_path(item.path, item.size, family)
            entry = load_valid_npz(npz_path, item, downscale, skip_cache_check, vae_id)
            if entry is None and _cache_of_other_vae(npz_path, vae_id):
                other_vae.append(npz_path)
            if entry is not None:
                item.cache = entry
                reused += 1
                continue
        todo.append(item)
    # same bucket and same augmentation needs -> one VAE batch
    todo.sort(key=lambda it: (it.bucket_reso[0] * it.bucket_reso[1], it.bucket_reso, it.subset.flip_aug))
    groups = {}
    for item in todo:
        groups.setdefault((item.bucket_reso, item.subset.flip_aug), []).append(item)
    for (_, flip), members in groups.items():
        for start in range(0, len(members), max(1, vae_batch_size)):
            _cache_batch(members[start:start + max(1, vae_batch_size)], encode, flip, to_disk, family, vae_id)
    if log is not None:
        if other_vae:
            log(f"latent cache: {len(other_vae)} file(s) were made by another VAE (another model or --vae), "
                f"re-encoding them, e.g. {other_vae[0]}")
        where = "memory and disk" if to_disk else "memory"
        log(f"latent cache ({where}): {reused} reused from disk, {len(todo)} encoded")
    return {"reused": reused, "rebuilt": len(todo)}


def _cache_of_other_vae(npz_path, vae_id):
    """Only for the log: does an otherwise readable cache file name a different encoder?"""
    if vae_id is None or not os.path.isfile(npz_path):
        return False
    try:
        with np.load(npz_path) as npz:
            return "vae_id" in npz.files and str(npz["vae_id"]) != vae_id
    except (OSError, ValueError):
        return False


def _cache_batch(batch, encode, flip, to_disk, family, vae_id=None):
    prepared = [_prepare(item) for item in batch]
    images = np.stack([p[0] for p in prepared])
    paths = [item.path for item in batch]
    latents = _encode(encode, images, paths)
    flipped = _encode(encode, np.ascontiguousarray(images[:, :, :, ::-1]), paths) if flip else None
    for k, item in enumerate(batch):
        entry = {"latents": latents[k], "original_size": tuple(prepared[k][1]), "crop_ltrb": prepared[k][2]}
        if flipped is not None:
            entry["latents_flipped"] = flipped[k]
        if item.subset.alpha_mask:
            entry["alpha_mask"] = prepared[k][3]
        item.cache = entry
        if to_disk:
            save_npz(latent_cache_path(item.path, item.size, family), item, entry, vae_id)
