"""The DDPM noise schedule every SD model was trained with, as plain numpy data.

Samplers and the training targets read their coefficients from here; nothing in this file runs a model.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


@dataclass(frozen=True)
class NoiseSchedule:
    """betas and alphas_cumprod over the training timesteps (float64; index = timestep)."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @property
    def num_train_timesteps(self):
        return len(self.betas)

    @property
    def sqrt_alphas_cumprod(self):
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self):
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def snr(self):
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per timestep (kohya's `all_snr`)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @property
    def sigmas(self):
        """k-diffusion noise levels sqrt((1 - alpha_bar) / alpha_bar) per timestep.

        A zero-terminal-SNR schedule has alpha_bar = 0 at the end; it is floored at 2**-24 (as diffusers'
        k-samplers do) so the largest sigma stays finite.
        """
        ac = np.maximum(self.alphas_cumprod, 2.0**-24)
        return np.sqrt((1.0 - ac) / ac)


def make_schedule(
    num_train_timesteps=NUM_TRAIN_TIMESTEPS,
    beta_start=BETA_START,
    beta_end=BETA_END,
    beta_schedule="scaled_linear",
    zero_terminal_snr=False,
):
    """The SD training schedule: betas linear in sqrt space ("scaled_linear") or linear, optional rescale."""
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    else:
        raise UserError(f"beta_schedule {beta_schedule!r} is not supported; expected 'scaled_linear' or 'linear'")
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return NoiseSchedule(betas=betas, alphas_cumprod=np.cumprod(1.0 - betas))


def rescale_zero_terminal_snr(betas):
    """Shift and scale sqrt(alpha_bar) so the last timestep is pure noise (arXiv 2305.08891, algorithm 1)."""
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas
