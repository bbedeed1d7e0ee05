"""Training noise and timesteps in numpy, drawn from one seeded `np.random.Generator` (kohya's
`get_noise_noisy_latents_and_timesteps` and the helpers in its custom_train_functions.py).

Draw order per batch, as kohya: the noise, the offset strength (`--noise_offset_random_strength`) and the
per-channel offset, the multires pyramid (a scale then a noise field per level), the timesteps, the
input-perturbation strength and noise. Every function takes the generator, so the data loop owns the only
random state and saves it with a resumable training state.
"""
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def sample_timesteps(rng, batch_size, min_timestep=None, max_timestep=None, num_train_timesteps=NUM_TRAIN_TIMESTEPS):
    """Uniform integer timesteps in [min_timestep, max_timestep) (kohya `randint(min or 0, max or 1000)`);
    with min >= max every sample gets max_timestep, as kohya's get_timesteps."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = num_train_timesteps if max_timestep is None else int(max_timestep)
    if low >= high:
        return np.full((batch_size,), high, dtype=np.int64)
    return rng.integers(low, high, size=(batch_size,), dtype=np.int64)


def channel_abs_means(latents):
    """|mean over H,W| per sample and channel, (B, C, 1, 1): what --adaptive_noise_scale scales."""
    return np.abs(np.asarray(latents, np.float32).mean(axis=(2, 3), keepdims=True))


def apply_noise_offset(rng, noise, noise_offset, random_strength=False, adaptive_noise_scale=None,
                       latent_abs_means=None):
    """noise + offset * randn(B, C, 1, 1) (crosslabs' offset noise, kohya's apply_noise_offset).

    random_strength: offset = U[0, 1) * noise_offset, one draw per batch. adaptive_noise_scale: offset +=
    scale * |channel mean of the sample's latents| (`latent_abs_means`, see channel_abs_means), clamped at 0.
    """
    if not noise_offset:
        return noise
    offset = rng.random() * noise_offset if random_strength else noise_offset
    if adaptive_noise_scale is not None:
        offset = np.maximum(offset + adaptive_noise_scale * latent_abs_means, 0.0)
    bias = rng.standard_normal((noise.shape[0], noise.shape[1], 1, 1))
    return (noise + offset * bias).astype(np.float32)


def upsample_bilinear(x, size):
    """(B, C, h, w) -> (B, C, H, W) as torch's `nn.Upsample(size, mode="bilinear")` (align_corners False)."""
    out_h, out_w = size
    rows, row_weights = _linear_taps(x.shape[2], out_h)
    cols, col_weights = _linear_taps(x.shape[3], out_w)
    top = x[:, :, rows[0], :] * row_weights[0][:, None] + x[:, :, rows[1], :] * row_weights[1][:, None]
    return top[:, :, :, cols[0]] * col_weights[0] + top[:, :, :, cols[1]] * col_weights[1]


def _linear_taps(in_size, out_size):
    """Source indices and weights of each output position (torch: src = (dst + 0.5) * in/out - 0.5, >= 0)."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    return (low, high), (1.0 - frac, frac)


def pyramid_noise_like(rng, noise, iterations=6, discount=0.4):
    """kohya's multires noise: add upsampled noise fields of shrinking size, weighted discount**i, then divide by
    the standard deviation of the whole batch (unbiased, as torch's std).

    Level i is a random factor r in [2, 4) shrunk r**i times (at least 1x1); the last level is the first to
    reach a side of 1.
    """
    b, c, height, width = noise.shape
    noise = np.asarray(noise, np.float64)
    for i in range(iterations):
        r = rng.random() * 2 + 2
        h, w = max(1, int(height / (r ** i))), max(1, int(width / (r ** i)))
        field = rng.standard_normal((b, c, h, w))
        noise = noise + upsample_bilinear(field, (height, width)) * discount ** i
        if h == 1 or w == 1:
            break
    return (noise / noise.std(ddof=1)).astype(np.float32)


def input_perturbation(rng, noise, gamma, random_strength=False):
    """--ip_noise_gamma: the noise the UNet input is made with, noise + gamma * randn (arXiv 2301.11706); the
    loss target keeps `noise`. random_strength: gamma * U[0, 1), one draw per batch."""
    if not gamma:
        return None
    strength = rng.random() * gamma if random_strength else gamma
    return (noise + strength * rng.standard_normal(noise.shape)).astype(np.float32)


def sample_noise(rng, latents, noise_offset=None, noise_offset_random_strength=False, adaptive_noise_scale=None,
                 multires_noise_iterations=None, multires_noise_discount=0.3):
    """Gaussian noise shaped like `latents` (B, C, H, W) with kohya's offset and multires options, in kohya's
    order. adaptive_noise_scale reads the channel means of `latents` (the real, scaled latents)."""
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    means = channel_abs_means(latents) if adaptive_noise_scale is not None and noise_offset else None
    noise = apply_noise_offset(rng, noise, noise_offset, noise_offset_random_strength, adaptive_noise_scale, means)
    if multires_noise_iterations:
        noise = pyramid_noise_like(rng, noise, multires_noise_iterations, multires_noise_discount)
    return noise
