"""kohya's face-centred crop augmentation (`face_crop_aug_range = [low, high]`, bucketing off).

The face box comes from the file name: `<name>_<cx>_<cy>_<w>_<h>.<ext>` (as kohya's face-detection tool writes).
Each sample picks a scale so the face spans between 1/high and 1/low of the shorter target side (never enlarging
the image, never below the target size), resizes, and cuts the target window around the face centre, with a
little jitter (or kohya's wider jitter with `random_crop`)."""
import os

from .images import resize


def face_box_from_name(path):
    """(cx, cy, w, h) from a `_cx_cy_w_h` file-name suffix, or None."""
    tokens = os.path.splitext(os.path.basename(path))[0].split("_")
    if len(tokens) < 5:
        return None
    try:
        box = tuple(int(t) for t in tokens[-4:])
    except ValueError:
        return None
    return box if box[0] > 0 else None


def face_crop(rgb, target_size, face_box, scale_range, rng, random_crop=False, interpolation=None):
    """Crop `rgb` (H, W, 3) to `target_size` (w, h) around the face. -> cropped array."""
    target_w, target_h = target_size
    height, width = rgb.shape[:2]
    if (width, height) == (target_w, target_h):
        return rgb
    face_cx, face_cy, face_w, face_h = face_box
    face_size = max(face_w, face_h)
    short = min(target_h, target_w)
    min_scale = max(target_h / height, target_w / width)
    min_scale = min(1.0, max(min_scale, short / (face_size * scale_range[1])))
    max_scale = min(1.0, max(min_scale, short / (face_size * scale_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    new_w, new_h = max(target_w, int(width * scale + 0.5)), max(target_h, int(height * scale + 0.5))
    rgb = resize(rgb, (new_w, new_h), interpolation)
    centre = {0: int(face_cy * scale + 0.5), 1: int(face_cx * scale + 0.5)}
    for axis, (target, length) in enumerate(((target_h, new_h), (target_w, new_w))):
        start = centre[axis] - target // 2
        if random_crop:
            spread = max(length - centre[axis], centre[axis])
            start += rng.randint(0, spread) + rng.randint(0, spread) - spread
        elif scale_range[0] != scale_range[1] and face_size > short // 10 and face_size >= 40:
            start += rng.randint(-face_size // 20, face_size // 20)
        start = max(0, min(start, length - target))
        rgb = rgb[start:start + target] if axis == 0 else rgb[:, start:start + target]
    return rgb
