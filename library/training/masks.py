"""Masked loss (kohya's apply_masked_loss): per-pixel loss weights from the batch, resized to the latents.

Sources, as kohya v0.10.1: a ControlNet-style subset's conditioning image (its R channel, [-1,1] -> [0,1];
such subsets are accepted only with --masked_loss), else the images' alpha channel (`alpha_mask` on a subset
or --alpha_mask). kohya applies the mask when --masked_loss is given OR the batch carries alpha masks, so
alpha masks weight the loss even without --masked_loss. The mask is resized to the latent size with area
interpolation (torch's `F.interpolate(mode="area")`, i.e. adaptive average pooling) in numpy here; the
multiplication happens in the compiled loss.
"""
import logging

import numpy as np

from ..config.params import KIND_CONTROLNET

log = logging.getLogger("sdms.training")


def _area_matrix(in_size, out_size):
    """(out, in) averaging weights of adaptive average pooling: output i averages inputs
    [floor(i * in / out), ceil((i + 1) * in / out))."""
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def area_resize(masks, size):
    """(B, H, W) -> (B, h, w) as torch's F.interpolate(masks[:, None], size=(h, w), mode="area")[:, 0]."""
    masks = np.asarray(masks, np.float64)
    (height, width), (h, w) = masks.shape[1:], size
    if height % h == 0 and width % w == 0:  # the usual case (latents are 1/8 of the image): block means
        return masks.reshape(masks.shape[0], h, height // h, w, width // w).mean(axis=(2, 4))
    return _area_matrix(height, h) @ masks @ _area_matrix(width, w).T


def batch_mask_image(batch):
    """The batch's (B, H, W) mask in [0, 1] at image resolution, or None (kohya's source order)."""
    conditioning = batch.get("conditioning_images")
    if conditioning is not None:
        return np.asarray(conditioning, np.float32)[:, 0] / 2 + 0.5  # R channel, [-1, 1] -> [0, 1]
    alpha = batch.get("alpha_masks")
    if alpha is not None:
        return np.asarray(alpha, np.float32)
    return None


def loss_mask(batch, latent_shape):
    """(B, C, h, w) float32 loss weights for latents of `latent_shape`, or None when the batch has no mask."""
    image = batch_mask_image(batch)
    if image is None:
        return None
    small = area_resize(image, latent_shape[2:])[:, None]
    return np.ascontiguousarray(np.broadcast_to(small, latent_shape), dtype=np.float32)


def mask_sources(dataset_group):
    """(subsets with alpha_mask, ControlNet-style subsets) of a DatasetGroup (any object without `datasets`
    has none)."""
    alpha, conditioning = [], []
    for dataset in getattr(dataset_group, "datasets", []):
        for subset in dataset.params.subsets:
            if subset.kind == KIND_CONTROLNET:
                conditioning.append(subset)
            elif subset.alpha_mask:
                alpha.append(subset)
    return alpha, conditioning


def uses_loss_mask(args, dataset_group, report=False):
    """Whether the compiled loss takes a mask input. `report`: log what masks the loss (one line)."""
    alpha, conditioning = mask_sources(dataset_group)
    masked = bool(alpha or conditioning)
    if report:
        if getattr(args, "masked_loss", False) and not masked:
            log.warning("--masked_loss: no subset has alpha_mask or conditioning_data_dir (and no --alpha_mask), so "
                        "there is no mask and the loss is not masked (as in kohya)")
        elif masked:
            sources = (["conditioning images (R channel) of " + ", ".join(s.source for s in conditioning)]
                       if conditioning else []) + (["alpha channels of " + ", ".join(s.source for s in alpha)]
                                                   if alpha else [])
            log.info("masked loss: the loss is weighted by the %s", "; ".join(sources))
    return masked
