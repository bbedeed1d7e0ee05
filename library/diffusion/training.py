"""Training-side diffusion maths inside the compiled step: noisy input, target, and kohya's loss options.

Plain functions of tensors and one Cell (`DiffusionTargets`) that holds the schedule tables as constants, so a
training Cell can call them in GRAPH_MODE. Every option is a Python constant read when the graph compiles,
so each configuration is one straight-line graph and the plain L2 loss is exactly the graph it always was.
The random half (noise, timesteps) is numpy, in `noise.py`.

The loss, in kohya's order (train_network.py `process_batch` / `post_process_loss`): an element-wise loss
(l2, l1, huber, smooth_l1 with a per-sample threshold from the timestep), x the loss mask, mean over C,H,W,
x the sample's loss weight (prior_loss_weight), then min-SNR, scale-v-pred-like-noise, v-pred-like and
debiased weights, then the batch mean.
"""
from dataclasses import dataclass, replace
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .schedule import NoiseSchedule

LOSS_TYPES = ("l1", "l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
SNR_CAP = 1000.0  # kohya caps the SNR before scale-v-pred / debiased weights (snr(t=0) would dominate)


@dataclass(frozen=True)
class LossOptions:
    """kohya's loss switches (their option names); `masked` and `input_perturbation` add objective inputs."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: Optional[float] = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: Optional[float] = None
    debiased_estimation_loss: bool = False
    masked: bool = False
    input_perturbation: bool = False

    @classmethod
    def from_args(cls, args, masked=False):
        return cls(loss_type=getattr(args, "loss_type", "l2"),
                   huber_schedule=getattr(args, "huber_schedule", "snr"),
                   huber_c=float(getattr(args, "huber_c", 0.1)),
                   huber_scale=float(getattr(args, "huber_scale", 1.0)),
                   min_snr_gamma=args.min_snr_gamma or None,
                   scale_v_pred_loss_like_noise_pred=bool(getattr(args, "scale_v_pred_loss_like_noise_pred", False)),
                   v_pred_like_loss=getattr(args, "v_pred_like_loss", None) or None,
                   debiased_estimation_loss=bool(getattr(args, "debiased_estimation_loss", False)),
                   masked=bool(masked),
                   input_perturbation=bool(getattr(args, "ip_noise_gamma", None)))

    @property
    def uses_huber_c(self):
        return self.loss_type in ("huber", "smooth_l1")


def huber_c_table(schedule: NoiseSchedule, huber_schedule, huber_c, huber_scale):
    """The Huber threshold for every timestep (kohya's get_huber_threshold_if_needed), float32 (T,).

    constant: c * scale; exponential: exp(-t * (-ln c) / T) * scale, from 1 * scale at t=0 to c * scale at t=T;
    snr: (1 - c) / (1 + sigma_t)**2 + c with sigma_t = sqrt((1 - alpha_bar) / alpha_bar) of the schedule the
    noise is added with (zero-terminal-SNR included: there sigma_T is infinite and the threshold is c).
    kohya applies huber_scale to the constant and exponential schedules only."""
    steps = schedule.num_train_timesteps
    t = np.arange(steps, dtype=np.float64)
    if huber_schedule == "constant":
        table = np.full(steps, huber_c * huber_scale)
    elif huber_schedule == "exponential":
        alpha = -np.log(huber_c) / steps
        table = np.exp(-alpha * t) * huber_scale
    elif huber_schedule == "snr":
        with np.errstate(divide="ignore"):
            sigmas = np.sqrt((1.0 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
        table = (1.0 - huber_c) / (1.0 + sigmas) ** 2 + huber_c
    else:
        raise ValueError(f"unknown huber schedule {huber_schedule!r}")
    return table.astype(np.float32)


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


def elementwise_loss(prediction, target, loss_type, huber_c=None):
    """kohya's conditional_loss with reduction "none". huber_c: (B,) thresholds (huber / smooth_l1 only).

    huber: 2c (sqrt(d^2 + c^2) - c); smooth_l1: 2 (sqrt(d^2 + c^2) - c) (kohya's pseudo-Huber forms)."""
    diff = prediction - target
    if loss_type == "l2":
        return diff * diff
    if loss_type == "l1":
        return ops.abs(diff)
    c = ops.broadcast_to(huber_c.reshape(-1, 1, 1, 1), diff.shape)  # equal shapes below (see ARCHITECTURE)
    root = ops.sqrt(diff * diff + c * c) - c
    if loss_type == "huber":
        return 2.0 * c * root
    return 2.0 * root


def min_snr_weight(snr, gamma, v_prediction):
    """Min-SNR-gamma weights: min(snr, gamma)/snr, or min(snr, gamma)/(snr + 1) for v-prediction."""
    clipped = ops.minimum(snr, gamma)
    return clipped / (snr + 1.0) if v_prediction else clipped / snr


def v_prediction_like_noise_scale(snr):
    """kohya's get_snr_scale: snr / (snr + 1) with snr capped at 1000 (--scale_v_pred_loss_like_noise_pred and
    --v_pred_like_loss)."""
    capped = ops.minimum(snr, SNR_CAP)
    return capped / (capped + 1.0)


def debiased_estimation_weight(snr, v_prediction):
    """kohya's --debiased_estimation_loss: 1/sqrt(snr) (1/(snr+1) for v-prediction), snr capped at 1000."""
    capped = ops.minimum(snr, SNR_CAP)
    return 1.0 / (capped + 1.0) if v_prediction else 1.0 / ops.sqrt(capped)


def weight_per_sample_loss(loss, snr, v_prediction, min_snr_gamma=None, scale_v_pred_like_noise=False,
                           v_pred_like_loss=None, debiased_estimation=False):
    """kohya's post_process_loss on (B,) losses, in its order (the switches are Python constants)."""
    if min_snr_gamma:
        loss = loss * min_snr_weight(snr, min_snr_gamma, v_prediction)
    if scale_v_pred_like_noise:
        loss = loss * v_prediction_like_noise_scale(snr)
    if v_pred_like_loss:
        loss = loss + loss / v_prediction_like_noise_scale(snr) * v_pred_like_loss
    if debiased_estimation:
        loss = loss * debiased_estimation_weight(snr, v_prediction)
    return loss


class DiffusionTargets(nn.Cell):
    """The schedule tables as constants: noisy input, target, and the weighted batch loss in `construct`.

    schedule: what the noise is added with (zero-terminal-SNR or not). snr_schedule: where the SNR weights
    come from; kohya computes its `all_snr` table before the zero-terminal-SNR fix, so its SNR weights keep
    the original schedule (default: `schedule`)."""

    def __init__(self, schedule: NoiseSchedule, v_prediction=False, options=None, snr_schedule=None):
        super().__init__()
        options = options or LossOptions()
        self.options = options  # (read in Python; the graph reads the plain attributes below)
        self.sqrt_alpha = ms.Tensor(schedule.sqrt_alphas_cumprod.astype(np.float32))
        self.sqrt_one_minus_alpha = ms.Tensor(schedule.sqrt_one_minus_alphas_cumprod.astype(np.float32))
        self.snr_table = ms.Tensor((snr_schedule or schedule).snr.astype(np.float32))
        self.v_prediction = bool(v_prediction)
        self.loss_type = options.loss_type
        self.masked = options.masked
        self.input_perturbation = options.input_perturbation
        self.huber_table = (ms.Tensor(huber_c_table(schedule, options.huber_schedule, options.huber_c,
                                                     options.huber_scale))
                            if options.uses_huber_c else None)
        self.min_snr_gamma = options.min_snr_gamma
        self.scale_v_pred_like_noise = options.scale_v_pred_loss_like_noise_pred
        self.v_pred_like_loss = options.v_pred_like_loss
        self.debiased_estimation = options.debiased_estimation_loss
        self.snr_weighted = bool(self.min_snr_gamma or self.scale_v_pred_like_noise or self.v_pred_like_loss or
                                 self.debiased_estimation)

    def set_masked(self, masked):
        """Switch the loss mask input on or off; only before the first compile (it changes the graph)."""
        self.options = replace(self.options, masked=bool(masked))
        self.masked = self.options.masked

    def noisy(self, latents, noise, timesteps):
        return add_noise(self.sqrt_alpha, self.sqrt_one_minus_alpha, latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        if self.v_prediction:
            return velocity(self.sqrt_alpha, self.sqrt_one_minus_alpha, latents, noise, timesteps)
        return noise

    def snr(self, timesteps):
        return ops.gather(self.snr_table, timesteps, 0)

    def per_sample_loss(self, prediction, target, timesteps, mask=None):
        """(B,) losses before the sample weights: element-wise loss x mask, mean over C,H,W."""
        if self.loss_type == "l2" and not self.masked:
            return per_sample_mse(prediction, target)  # the plain graph, unchanged
        huber_c = ops.gather(self.huber_table, timesteps, 0) if self.huber_table is not None else None
        loss = elementwise_loss(prediction, target, self.loss_type, huber_c)
        if self.masked:
            loss = loss * mask
        return loss.mean(axis=(1, 2, 3))

    def construct(self, prediction, target, timesteps, loss_weights, mask=None):
        """Per-sample loss x loss_weights (prior_loss_weight) x kohya's SNR-based weights, then the batch mean.
        mask: (B,C,h,w) loss weights in [0,1] when `options.masked`."""
        loss = self.per_sample_loss(prediction, target, timesteps, mask) * loss_weights
        if self.snr_weighted:
            loss = weight_per_sample_loss(loss, self.snr(timesteps), self.v_prediction, self.min_snr_gamma,
                                          self.scale_v_pred_like_noise, self.v_pred_like_loss,
                                          self.debiased_estimation)
        return loss.mean()
