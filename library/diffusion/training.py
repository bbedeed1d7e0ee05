"""Training-side diffusion pieces: noise and timesteps (numpy, seeded) and targets/loss (MindSpore graph ops).

The numpy half runs in the data loop with a `np.random.Generator`, so a run is reproducible whatever the
device. The graph half is made of plain functions of tensors and one Cell holding the schedule tables, so
the training step Cell can call them inside `construct` in GRAPH_MODE.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .schedule import NoiseSchedule

# ---------------------------------------------------------------- numpy side (data loop)


def sample_timesteps(rng, batch_size, min_timestep=None, max_timestep=None, num_train_timesteps=1000):
    """Uniform integer timesteps in [min_timestep, max_timestep) as kohya (`randint(min or 0, max or 1000)`)."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = num_train_timesteps if max_timestep is None else int(max_timestep)
    return rng.integers(low, high, size=(batch_size,), dtype=np.int64)


def sample_noise(
    rng,
    latents,
    noise_offset=None,
    noise_offset_random_strength=False,
    adaptive_noise_scale=None,
):
    """Gaussian noise shaped like `latents` (B,C,H,W), with kohya's optional per-channel offset.

    noise_offset: noise += off * randn(B, C, 1, 1); with random strength, off is drawn once per batch
    in [0, off). adaptive_noise_scale adds scale * |mean latent per channel| to off (clamped at >= 0).
    """
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    if noise_offset:
        offset = float(noise_offset)
        if noise_offset_random_strength:
            offset = rng.random() * offset
        if adaptive_noise_scale is not None:
            channel_mean = np.abs(latents.mean(axis=(2, 3), keepdims=True))
            offset = np.maximum(offset + adaptive_noise_scale * channel_mean, 0.0)
        bias = rng.standard_normal((latents.shape[0], latents.shape[1], 1, 1))
        noise = (noise + offset * bias).astype(np.float32)
    return noise


def perturb_noise(rng, noise, ip_noise_gamma):
    """Input perturbation: the noise used for `add_noise` gets gamma * randn more; the target keeps `noise`."""
    if not ip_noise_gamma:
        return noise
    return (noise + ip_noise_gamma * rng.standard_normal(noise.shape)).astype(np.float32)


# ---------------------------------------------------------------- graph side (inside a training Cell)


def _per_sample(table, timesteps):
    """table[t] reshaped to (B,1,1,1) so it broadcasts over latents."""
    return ops.gather(table, timesteps, 0).reshape(-1, 1, 1, 1)


def add_noise(sqrt_alpha, sqrt_one_minus_alpha, latents, noise, timesteps):
    """q(x_t | x_0) = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise."""
    return _per_sample(sqrt_alpha, timesteps) * latents + _per_sample(sqrt_one_minus_alpha, timesteps) * noise


def velocity(sqrt_alpha, sqrt_one_minus_alpha, latents, noise, timesteps):
    """v-prediction target: sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x_0."""
    return _per_sample(sqrt_alpha, timesteps) * noise - _per_sample(sqrt_one_minus_alpha, timesteps) * latents


def per_sample_mse(prediction, target):
    """Squared error averaged over C,H,W: one loss per sample, shape (B,)."""
    return ((prediction - target) ** 2).mean(axis=(1, 2, 3))


def min_snr_weight(snr, gamma, v_prediction):
    """Min-SNR-gamma weights: min(snr, gamma)/snr, or min(snr, gamma)/(snr + 1) for v-prediction."""
    clipped = ops.minimum(snr, gamma)
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


def v_prediction_like_noise_scale(snr):
    """kohya's --scale_v_pred_loss_like_noise_pred: snr / (snr + 1) with snr capped at 1000."""
    capped = ops.minimum(snr, 1000.0)
    return capped / (capped + 1.0)


def debiased_estimation_weight(snr, v_prediction):
    """kohya's --debiased_estimation_loss: 1/sqrt(snr) (1/(snr+1) for v-prediction), snr capped at 1000."""
    capped = ops.minimum(snr, 1000.0)
    return 1.0 / (capped + 1.0) if v_prediction else 1.0 / ops.sqrt(capped)


class DiffusionTargets(nn.Cell):
    """The schedule tables as constants: noisy input, target, and the weighted batch loss in `construct`."""

    def __init__(self, schedule: NoiseSchedule, v_prediction=False, min_snr_gamma=None):
        super().__init__()
        self.sqrt_alpha = ms.Tensor(schedule.sqrt_alphas_cumprod.astype(np.float32))
        self.sqrt_one_minus_alpha = ms.Tensor(schedule.sqrt_one_minus_alphas_cumprod.astype(np.float32))
        self.snr_table = ms.Tensor(schedule.snr.astype(np.float32))
        self.v_prediction = bool(v_prediction)
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)

    def noisy(self, latents, noise, timesteps):
        return add_noise(self.sqrt_alpha, self.sqrt_one_minus_alpha, latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        if self.v_prediction:
            return velocity(self.sqrt_alpha, self.sqrt_one_minus_alpha, latents, noise, timesteps)
        return noise

    def snr(self, timesteps):
        return ops.gather(self.snr_table, timesteps, 0)

    def construct(self, prediction, target, timesteps, loss_weights):
        """Per-sample MSE x loss_weights (prior_loss_weight) x min-SNR weight, then the batch mean."""
        loss = per_sample_mse(prediction, target) * loss_weights
        if self.min_snr_gamma is not None:
            loss = loss * min_snr_weight(self.snr(timesteps), self.min_snr_gamma, self.v_prediction)
        return loss.mean()
