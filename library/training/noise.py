"""Noise and timesteps for each batch, in the data loop (numpy): kohya's
`get_noise_noisy_latents_and_timesteps` with every noise option, for the GLOBAL batch.

Everything is drawn for the global batch (batch x workers) from the one seeded generator and then sliced per
worker, so a data-parallel run sees exactly the random numbers of a single-process run with the same global
batch. The only input that is not random is --adaptive_noise_scale's channel means of the real latents;
each worker has only its own samples, so with several workers those (B, C) means are all-gathered first.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..diffusion import noise as kohya_noise


@dataclass
class StepNoise:
    noise: np.ndarray  # (B, C, h, w): what the target is made with
    timesteps: np.ndarray  # (B,) int64
    input_noise: Optional[np.ndarray] = None  # --ip_noise_gamma: what the UNet input is made with


class TrainingNoise:
    def __init__(self, args, world):
        self.args = args
        self.world = world

    def __call__(self, latents, rng):
        """latents: this worker's (B, C, h, w) scaled latents; rng: the loop's generator (the training one, or
        validation's re-seeded one) -> this worker's StepNoise."""
        a, world = self.args, self.world
        local = latents.shape[0]
        global_shape = (local * world.size,) + tuple(latents.shape[1:])
        noise = rng.standard_normal(global_shape).astype(np.float32)
        adaptive = getattr(a, "adaptive_noise_scale", None)
        means = None
        if a.noise_offset and adaptive is not None:
            means = kohya_noise.channel_abs_means(latents)
            if world.size > 1:
                means = world.gather_rows(means)
        noise = kohya_noise.apply_noise_offset(rng, noise, a.noise_offset, a.noise_offset_random_strength,
                                               adaptive, means)
        if getattr(a, "multires_noise_iterations", None):
            noise = kohya_noise.pyramid_noise_like(rng, noise, a.multires_noise_iterations,
                                                   a.multires_noise_discount)
        timesteps = kohya_noise.sample_timesteps(rng, global_shape[0], a.min_timestep, a.max_timestep)
        input_noise = kohya_noise.input_perturbation(rng, noise, getattr(a, "ip_noise_gamma", None),
                                                     getattr(a, "ip_noise_gamma_random_strength", False))
        part = slice(world.rank * local, (world.rank + 1) * local)
        return StepNoise(noise[part], timesteps[part], None if input_noise is None else input_noise[part])
