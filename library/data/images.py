"""Image files: listing, size headers, loading, resize + crop to a bucket, flip and colour augmentation.

Resizing uses PIL (kohya uses OpenCV): shrinking defaults to `Image.BOX` (exact area averaging, the same idea as
cv2.INTER_AREA), enlarging to `Image.LANCZOS`; `resize_interpolation` picks one filter for both directions."""
import os

import numpy as np
from PIL import Image

from ..config.images_ext import IMAGE_EXTENSIONS
from ..errors import UserError
from .buckets import get_crop_ltrb

FILTERS = {
    "lanczos": Image.LANCZOS, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "linear": Image.BILINEAR,
    "bicubic": Image.BICUBIC, "cubic": Image.BICUBIC, "area": Image.BOX, "box": Image.BOX,
}


def list_images(folder):
    """Image files directly inside `folder` (no recursion), extension compared case-insensitively, sorted."""
    try:
        names = os.listdir(folder)
    except OSError as e:
        raise UserError(f"cannot list image folder {folder}: {e.strerror}") from e
    return [os.path.join(folder, n) for n in sorted(names)
            if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, n))]


def _open(path):
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise UserError(f"image not found: {path}") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({e}); re-save it as PNG/JPEG or remove it") from e


JPEG_END_MARKER = b"\xff\xd9"
JPEG_TAIL_BYTES = 4096  # some writers pad after the end marker


def image_size(path):
    """(width, height) from the file header, without decoding the pixels. A file cut short (interrupted
    copy or download) is refused here, before training, not when its batch comes up hours later."""
    with _open(path) as image:
        size, kind = image.size, image.format
        if kind == "PNG":
            try:
                image.verify()  # walks the chunks and checks their CRCs; no decompression
            except (OSError, SyntaxError, ValueError) as e:
                raise UserError(f"cannot read image {path}: damaged or truncated PNG ({e}); re-save it or "
                                "remove it") from e
    if kind == "JPEG" and not _jpeg_has_end(path):
        raise UserError(f"cannot read image {path}: truncated JPEG (no end-of-image marker); re-save it or "
                        "remove it")
    return size


def _jpeg_has_end(path):
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - JPEG_TAIL_BYTES))
        return JPEG_END_MARKER in f.read()


def load_image(path, with_alpha=False):
    """-> uint8 (H, W, 3) RGB, and with `with_alpha` also a float32 (H, W) alpha in [0, 1] (ones if none)."""
    try:
        with _open(path) as image:
            image.load()
            rgb = np.asarray(image.convert("RGB"))
            alpha = None
            if with_alpha:
                has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
                alpha = (np.asarray(image.convert("RGBA"))[:, :, 3].astype(np.float32) / 255.0 if has_alpha
                         else np.ones(rgb.shape[:2], np.float32))
    except OSError as e:
        raise UserError(f"cannot decode image {path} ({e}); re-save it as PNG/JPEG or remove it") from e
    return (rgb, alpha) if with_alpha else rgb


def resize(array, size, interpolation=None):
    """Resize an (H, W[, C]) uint8 or float32 array to `size` = (width, height)."""
    height, width = array.shape[:2]
    if (width, height) == tuple(size):
        return array
    shrinking = size[0] * size[1] < width * height
    resample = FILTERS[interpolation] if interpolation else (Image.BOX if shrinking else Image.LANCZOS)
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize(tuple(size), resample))
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(tuple(size), resample))


def trim_and_resize(array, bucket_reso, resized_size, rng=None, random_crop=False, interpolation=None):
    """Resize to `resized_size` (it covers the bucket) and crop the overflow: centre, or a random offset.
    -> (array of bucket size, original_size (w, h), crop_ltrb (SDXL conditioning rule), offsets (x, y))."""
    original_size = (array.shape[1], array.shape[0])
    array = resize(array, resized_size, interpolation)
    height, width = array.shape[:2]
    x = y = 0
    if width > bucket_reso[0]:
        extra = width - bucket_reso[0]
        x = rng.randint(0, extra) if random_crop else extra // 2
        array = array[:, x:x + bucket_reso[0]]
    if height > bucket_reso[1]:
        extra = height - bucket_reso[1]
        y = rng.randint(0, extra) if random_crop else extra // 2
        array = array[y:y + bucket_reso[1]]
    if array.shape[:2] != (bucket_reso[1], bucket_reso[0]):
        raise AssertionError(f"internal error: cropped to {array.shape[:2]}, bucket {bucket_reso}")
    return array, original_size, get_crop_ltrb(bucket_reso, original_size), (x, y)


def crop_like(mask, bucket_reso, resized_size, offsets, interpolation=None):
    """Apply the same resize and crop as `trim_and_resize` did (its returned offsets) to a float mask."""
    mask = resize(mask, resized_size, interpolation)
    x, y = offsets
    return mask[y:y + bucket_reso[1], x:x + bucket_reso[0]]


def color_aug(rgb, rng):
    """kohya's weak colour augmentation: with p=1/3, either a hue shift of up to +-8/180 of the circle or a
    gamma in [0.95, 1.05] (applied to 0-255 values, clipped, as kohya does)."""
    if rng.random() > 0.33:
        return rgb
    if rng.random() > 0.5:
        shift = rng.uniform(-8, 8) / 180.0
        hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).copy()
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + int(round(shift * 256))) % 256).astype(np.uint8)
        return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(rgb.astype(np.float32) ** gamma, 0, 255).astype(np.uint8)


def to_chw_tensor(rgb):
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]."""
    return (rgb.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0
