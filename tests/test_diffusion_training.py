"""Schedule, noise and training targets vs diffusers' DDPMScheduler and kohya's loss formulas."""
import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr
from mindspore import nn

from library.diffusion import noise as noise_lib
from library.diffusion import training
from library.diffusion.schedule import make_schedule


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def _diffusers_ddpm(**kw):
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, **kw)


def test_schedule_matches_diffusers():
    ours = make_schedule()
    ref = _diffusers_ddpm()
    assert _rel(ours.betas, ref.betas.numpy()) < 1e-5
    assert _rel(ours.alphas_cumprod, ref.alphas_cumprod.numpy()) < 1e-5
    # kohya's all_snr = (sqrt(a)/sqrt(1-a))^2
    ac = ref.alphas_cumprod.numpy().astype(np.float64)
    assert _rel(ours.snr, ac / (1 - ac)) < 1e-4


def test_zero_terminal_snr_matches_diffusers():
    ours = make_schedule(zero_terminal_snr=True)
    ref_betas = rescale_zero_terminal_snr(_diffusers_ddpm().betas.double()).numpy()
    assert np.abs(ours.betas - ref_betas).max() < 1e-6
    assert ours.alphas_cumprod[-1] < 1e-12
    assert np.isfinite(ours.sigmas).all()


class _TargetsProbe(nn.Cell):
    """Runs the graph-side functions inside a GRAPH_MODE construct."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def construct(self, latents, noise, timesteps, prediction, loss_weights):
        noisy = self.targets.noisy(latents, noise, timesteps)
        target = self.targets.target(latents, noise, timesteps)
        loss = self.targets(prediction, target, timesteps, loss_weights)
        return noisy, target, loss


def _kohya_loss(pred, target, t, weights, snr_all, gamma, v_pred):
    loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean([1, 2, 3]) * weights
    if gamma is not None:
        snr = torch.stack([snr_all[i] for i in t])
        clipped = torch.minimum(snr, torch.full_like(snr, gamma))
        loss = loss * (clipped / (snr + 1) if v_pred else clipped / snr)
    return loss.mean()


@pytest.mark.parametrize("v_pred,gamma", [(False, None), (False, 5.0), (True, 5.0)])
def test_targets_and_loss_match_reference(v_pred, gamma):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    pred = rng.standard_normal(latents.shape).astype(np.float32)
    t = np.array([0, 517, 999], np.int32)
    weights = np.array([1.0, 0.5, 1.0], np.float32)

    schedule = make_schedule()
    probe = _TargetsProbe(training.DiffusionTargets(schedule, v_prediction=v_pred,
                                                    options=training.LossOptions(min_snr_gamma=gamma)))
    noisy, target, loss = probe(*(ms.Tensor(a) for a in (latents, noise, t, pred, weights)))

    ref = _diffusers_ddpm(prediction_type="v_prediction" if v_pred else "epsilon")
    tl, tn, tt = torch.from_numpy(latents), torch.from_numpy(noise), torch.from_numpy(t.astype(np.int64))
    assert _rel(noisy.asnumpy(), ref.add_noise(tl, tn, tt).numpy()) < 1e-4
    ref_target = ref.get_velocity(tl, tn, tt) if v_pred else tn
    assert _rel(target.asnumpy(), ref_target.numpy()) < 1e-4
    ac = ref.alphas_cumprod.double()
    snr_all = ac / (1 - ac)
    ref_loss = _kohya_loss(torch.from_numpy(pred).double(), ref_target.double(), tt,
                           torch.from_numpy(weights).double(), snr_all, gamma, v_pred)
    assert _rel(loss.asnumpy(), ref_loss.numpy()) < 1e-4


def test_timesteps_respect_bounds_and_seed():
    t = noise_lib.sample_timesteps(np.random.default_rng(1), 4000, min_timestep=100, max_timestep=300)
    assert t.min() >= 100 and t.max() <= 299 and len(np.unique(t)) == 200
    again = noise_lib.sample_timesteps(np.random.default_rng(1), 4000, min_timestep=100, max_timestep=300)
    assert (t == again).all()
    full = noise_lib.sample_timesteps(np.random.default_rng(2), 5000)
    assert full.min() == 0 and full.max() == 999


def test_noise_offset_adds_per_channel_bias():
    latents = np.zeros((64, 4, 8, 8), np.float32)
    plain = noise_lib.sample_noise(np.random.default_rng(3), latents)
    offset = noise_lib.sample_noise(np.random.default_rng(3), latents, noise_offset=0.5)
    bias = offset - plain  # same generator state for the first draw: the difference is the offset term
    per_channel = bias.reshape(64, 4, -1)
    assert np.allclose(per_channel, per_channel[..., :1], atol=1e-6)  # constant over H,W
    assert abs(per_channel[..., 0].std() - 0.5) < 0.1
    assert plain.dtype == np.float32 and abs(plain.std() - 1.0) < 0.05

    rand = noise_lib.sample_noise(np.random.default_rng(3), latents, noise_offset=0.5,
                                 noise_offset_random_strength=True)
    assert 0 < np.abs(rand - plain).max() < np.abs(bias).max() + 1e-6


def test_adaptive_noise_scale_uses_latent_mean():
    latents = np.full((2, 4, 4, 4), -2.0, np.float32)
    plain = noise_lib.sample_noise(np.random.default_rng(4), latents)
    adapt = noise_lib.sample_noise(np.random.default_rng(4), latents, noise_offset=0.1, adaptive_noise_scale=0.5)
    rng = np.random.default_rng(4)
    rng.standard_normal(latents.shape)
    expected_bias = (0.1 + 0.5 * 2.0) * rng.standard_normal((2, 4, 1, 1))
    assert np.allclose(adapt - plain, np.broadcast_to(expected_bias, latents.shape), atol=1e-5)


def test_input_perturbation_makes_a_separate_input_noise():
    noise = np.zeros((2, 4, 3, 3), np.float32)
    assert noise_lib.input_perturbation(np.random.default_rng(5), noise, None) is None
    perturbed = noise_lib.input_perturbation(np.random.default_rng(5), noise, 0.1)
    assert 0.05 < perturbed.std() < 0.15 and not noise.any()
