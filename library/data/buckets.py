"""Aspect-ratio buckets with kohya's algorithm. Resolutions are (width, height) throughout.

- `make_bucket_resolutions`: the square of the max area plus every (w, h) / (h, w) on the step grid whose
  area fits, sorted.
- `BucketSelector.select`: with upscaling, the predefined bucket with the closest aspect ratio (argmin, first
  wins) and a cover-resize; with `no_upscale`, shrink to the max area only if larger (keeping the rounding
  that preserves the aspect ratio best), then floor each side to the step (crop, never pad)."""
import math

import numpy as np


def make_bucket_resolutions(max_reso, min_size=256, max_size=1024, divisible=64):
    max_width, max_height = max_reso
    max_area = max_width * max_height
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def get_crop_ltrb(bucket_reso, image_size):
    """SDXL crop conditioning as SAI computes it: fit the image inside the bucket by its limiting side,
    centre it; (left, top) is half the leftover, (right, bottom) = left/top + fitted size (used for flips)."""
    bucket_ar = bucket_reso[0] / bucket_reso[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        fitted_w, fitted_h = bucket_reso[1] * image_ar, bucket_reso[1]
    else:
        fitted_w, fitted_h = bucket_reso[0], bucket_reso[0] / image_ar
    left = (bucket_reso[0] - fitted_w) // 2
    top = (bucket_reso[1] - fitted_h) // 2
    return left, top, left + fitted_w, top + fitted_h


class BucketSelector:
    def __init__(self, no_upscale, max_reso, min_size=None, max_size=None, reso_steps=64, predefined=None):
        self.no_upscale = no_upscale
        self.max_reso = tuple(max_reso)
        self.max_area = self.max_reso[0] * self.max_reso[1]
        self.reso_steps = reso_steps
        if predefined is None and not no_upscale:
            predefined = make_bucket_resolutions(self.max_reso, min_size, max_size, reso_steps)
        self.predefined = list(predefined or [])
        self._predefined_set = set(self.predefined)
        self._predefined_ars = np.array([w / h for w, h in self.predefined])

    def round_to_steps(self, x):
        x = int(x + 0.5)
        return x - x % self.reso_steps

    def select(self, image_width, image_height):
        """-> (bucket_reso, resized_size, ar_error) for an image of that size."""
        aspect = image_width / image_height
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self._predefined_set:
                reso = self.predefined[int(np.abs(self._predefined_ars - aspect).argmin())]
            # cover the bucket: match the side that would otherwise fall short, crop the other
            scale = reso[1] / image_height if aspect > reso[0] / reso[1] else reso[0] / image_width
            resized = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            resized = self._no_upscale_size(image_width, image_height, aspect)
            steps = self.reso_steps
            reso = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
        return reso, resized, reso[0] / reso[1] - aspect

    def _no_upscale_size(self, width, height, aspect):
        if width * height <= self.max_area:
            return (width, height)
        target_w = math.sqrt(self.max_area * aspect)
        target_h = self.max_area / target_w
        w_first = self.round_to_steps(target_w)
        ar_w_first = w_first / (self.round_to_steps(w_first / aspect) or self.reso_steps)
        h_first = self.round_to_steps(target_h)
        ar_h_first = self.round_to_steps(h_first * aspect) / (h_first or self.reso_steps)
        if abs(ar_w_first - aspect) < abs(ar_h_first - aspect):
            return (w_first, int(w_first / aspect + 0.5))
        return (int(h_first * aspect + 0.5), h_first)
