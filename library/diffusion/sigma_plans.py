"""Which noise levels and timesteps a sampler visits for a given step count.

These follow diffusers' `set_timesteps` for each scheduler with its default config (so images match the
diffusers pipelines): the timestep grid ("leading" with steps_offset for DDIM/PNDM, "linspace" for the
k-samplers), the sigma interpolation, and the Karras ramp (rho = 7) with its timestep rounding rules.
"""
from dataclasses import dataclass

import numpy as np

from .schedule import NoiseSchedule

KARRAS_RHO = 7.0


@dataclass(frozen=True)
class SigmaPlan:
    """k-diffusion plan: sigmas (N+1, last 0) and the model timestep paired with each of the first N."""

    sigmas: np.ndarray
    timesteps: np.ndarray
    log_sigma_table: np.ndarray  # log sigma per training timestep, for sigma -> t of intermediate points
    init_sigma: float  # scale of the initial unit noise

    def sigma_to_t(self, sigma):
        return sigma_to_t(sigma, self.log_sigma_table)


def sigma_to_t(sigma, log_sigma_table):
    """Fractional training timestep whose sigma is `sigma` (linear in log sigma between table entries)."""
    log_sigma = np.log(max(float(sigma), 1e-10))
    low = int(np.clip(np.sum(log_sigma_table <= log_sigma) - 1, 0, len(log_sigma_table) - 2))
    lo, hi = log_sigma_table[low], log_sigma_table[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min, sigma_max, steps, rho=KARRAS_RHO):
    """Karras et al. (2022) ramp: uniform in sigma^(1/rho) from sigma_max down to sigma_min."""
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def linspace_timesteps(steps, num_train_timesteps):
    return np.linspace(0, num_train_timesteps - 1, steps)[::-1].copy()


def leading_timesteps(steps, num_train_timesteps, steps_offset):
    """Integer grid 0, r, 2r, ... (r = T // steps) plus steps_offset, descending."""
    ratio = num_train_timesteps // steps
    return (np.arange(steps) * ratio)[::-1].astype(np.int64) + steps_offset


def k_plan(schedule: NoiseSchedule, steps, karras=False, round_karras_timesteps=False):
    """Plan for Euler / Euler a / Heun / LMS / DPM2 / DPM2 a (diffusers' linspace spacing)."""
    table = schedule.sigmas
    log_table = np.log(table)
    timesteps = linspace_timesteps(steps, schedule.num_train_timesteps)
    sigmas = np.interp(timesteps, np.arange(len(table)), table)
    if karras:
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
        timesteps = np.array([sigma_to_t(s, log_table) for s in sigmas])
        if round_karras_timesteps:
            timesteps = np.round(timesteps)
    sigmas = np.concatenate([sigmas, [0.0]])
    return SigmaPlan(sigmas=sigmas, timesteps=timesteps, log_sigma_table=log_table, init_sigma=float(sigmas.max()))


def dpm_solver_plan(schedule: NoiseSchedule, steps, karras=False, final_sigma_min=False):
    """Plan for DPM-Solver(++) multistep: integer linspace over N+1 points without the last, or Karras.

    The last step goes to sigma 0, or to the smallest training sigma (diffusers' final_sigmas_type
    "sigma_min", which its epsilon-space "dpmsolver" requires).
    """
    table = schedule.sigmas
    log_table = np.log(table)
    if karras:
        sigmas = karras_sigmas(table[0], table[-1], steps)
        timesteps = np.round([sigma_to_t(s, log_table) for s in sigmas])
    else:
        timesteps = np.linspace(0, schedule.num_train_timesteps - 1, steps + 1).round()[::-1][:-1].copy()
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
    sigmas = np.concatenate([sigmas, [table[0] if final_sigma_min else 0.0]])
    return SigmaPlan(sigmas=sigmas, timesteps=timesteps, log_sigma_table=log_table, init_sigma=1.0)
