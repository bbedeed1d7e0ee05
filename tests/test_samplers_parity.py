"""Every sampler against the diffusers scheduler of the same kind: same toy model, latents and noise."""
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

from library.diffusion import samplers
from library.diffusion.schedule import make_schedule
from library.errors import UserError

SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def toy_model(x, t):
    """A fixed smooth function of the model input and the timestep, standing in for the UNet."""
    x = np.asarray(x, np.float64)
    return (0.6 * np.tanh(x) * np.cos(t / 400.0) + 0.3 * np.sin(0.7 * x + t / 250.0)).astype(np.float32)


def run_diffusers(scheduler, noise, steps, generator=None):
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(noise) * scheduler.init_noise_sigma
    calls = 0
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        out = torch.from_numpy(toy_model(model_in.numpy(), float(t)))
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        calls += 1
    return x.numpy(), calls


class CountingModel:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return toy_model(x, t)


CASES = [
    # (our name, diffusers class, extra config)
    ("ddim", DDIMScheduler, dict(steps_offset=1, clip_sample=False)),
    ("pndm", PNDMScheduler, dict(steps_offset=1, skip_prk_steps=True)),
    ("k_euler", EulerDiscreteScheduler, {}),
    ("heun", HeunDiscreteScheduler, {}),
    ("k_lms", LMSDiscreteScheduler, {}),
    ("k_dpm_2", KDPM2DiscreteScheduler, {}),
    ("dpmsolver++", DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++")),
    ("dpmsolver", DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")),
]
KARRAS = {"k_euler", "heun", "k_lms", "k_dpm_2", "dpmsolver++"}


def _compare(name, cls, extra, prediction, karras, steps=12, **our_options):
    noise = np.random.default_rng(0).standard_normal((2, 4, 6, 5)).astype(np.float32)
    config = dict(SD_SCHEDULE, prediction_type=prediction, **extra)
    if karras:
        config["use_karras_sigmas"] = True
    expected, ref_calls = run_diffusers(cls(**config), noise, steps)
    model = CountingModel()
    ours = samplers.sample(name, model, noise, make_schedule(), steps, v_prediction=prediction == "v_prediction",
                           karras=karras, **our_options)
    assert model.calls == ref_calls
    assert np.abs(ours - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    return ours


@pytest.mark.parametrize("name,cls,extra", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_deterministic_sampler_matches_diffusers(name, cls, extra, prediction):
    _compare(name, cls, extra, prediction, karras=False)


@pytest.mark.parametrize("name,cls,extra", [c for c in CASES if c[0] in KARRAS], ids=sorted(KARRAS))
def test_karras_sigmas_match_diffusers(name, cls, extra):
    _compare(name, cls, extra, "epsilon", karras=True)


def test_ddim_clip_sample_matches_diffusers():
    ours = _compare("ddim", DDIMScheduler, dict(steps_offset=1, clip_sample=True), "epsilon", karras=False,
                    clip_sample=True)
    unclipped = samplers.sample("ddim", toy_model, np.random.default_rng(0).standard_normal((2, 4, 6, 5)),
                                make_schedule(), 12, clip_sample=False)
    assert np.abs(ours - unclipped).max() > 1e-3  # the option has an effect on this model


@pytest.mark.parametrize("name,cls", [("k_euler_a", EulerAncestralDiscreteScheduler),
                                      ("dpm_2_a", KDPM2AncestralDiscreteScheduler)])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ancestral_sampler_matches_diffusers_with_the_same_noise(name, cls, prediction):
    noise = np.random.default_rng(1).standard_normal((2, 4, 6, 5)).astype(np.float32)
    ref_gen = torch.Generator().manual_seed(7)
    expected, _ = run_diffusers(cls(**SD_SCHEDULE, prediction_type=prediction), noise, 10, generator=ref_gen)
    our_gen = torch.Generator().manual_seed(7)
    ours = samplers.sample(name, toy_model, noise, make_schedule(), 10, v_prediction=prediction == "v_prediction",
                           noise_fn=lambda shape: torch.randn(shape, generator=our_gen).numpy())
    assert np.abs(ours - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())


def test_per_image_noise_is_independent_of_batch_composition():
    both = samplers.PerImageNoise([11, 22])
    alone = samplers.PerImageNoise([22])
    first_both, first_alone = both((2, 3, 4)), alone((1, 3, 4))
    assert np.array_equal(first_both[1], first_alone[0])
    assert np.array_equal(both((2, 3, 4))[1], alone((1, 3, 4))[0])
    assert not np.array_equal(first_both[0], first_both[1])


def test_aliases_and_unknown_names():
    assert samplers.resolve_sampler("K_EULER_A") == "euler_a"
    assert samplers.resolve_sampler("dpmsingle") == "dpmsolver++"
    with pytest.raises(UserError) as err:
        samplers.resolve_sampler("dpm++_sde")
    assert "dpm++_sde" in str(err.value) and "euler_a" in str(err.value) and "--sampler" in str(err.value)
    with pytest.raises(UserError, match="--steps"):
        samplers.sample("euler", toy_model, np.zeros((1, 4, 2, 2)), make_schedule(), 0)
