"""Sampler names (kohya's, with the k_* aliases) and one entry point that runs any of them.

`sample(name, model, noise, schedule, steps, ...)` takes `model(x_in, t) -> raw output` (epsilon or v,
numpy in and out; classifier-free guidance lives inside `model`) and unit Gaussian `noise`, and returns the
final latents. Schedules, plans and update rules live in schedule.py, sigma_plans.py, k_samplers.py and
vp_samplers.py.

Name mapping (kohya accepts 16 names):
  ddim, pndm (PLMS, diffusers' skip_prk_steps form), lms, euler, euler_a, heun, dpm_2, dpm_2_a,
  dpmsolver (DPM-Solver 2M on epsilon), dpmsolver++ (DPM++ 2M);
  k_lms, k_euler, k_euler_a, k_dpm_2, k_dpm_2_a are aliases of the names without k_;
  dpmsingle (diffusers' single-step DPM-Solver) is run as dpmsolver++ (DPM++ 2M), the nearest we have.
"""
import numpy as np

from ..errors import UserError
from . import k_samplers, vp_samplers
from .schedule import NoiseSchedule
from .sigma_plans import dpm_solver_plan, k_plan

_K_SAMPLERS = {
    "euler": (k_samplers.euler, False),
    "euler_a": (k_samplers.euler_ancestral, False),
    "heun": (k_samplers.heun, False),
    "lms": (k_samplers.lms, False),
    "dpm_2": (k_samplers.dpm_2, True),  # diffusers rounds KDPM2's Karras timesteps
    "dpm_2_a": (k_samplers.dpm_2_ancestral, True),
}
_VP_SAMPLERS = ("ddim", "pndm", "dpmsolver", "dpmsolver++")
ALIASES = {
    "k_lms": "lms",
    "k_euler": "euler",
    "k_euler_a": "euler_a",
    "k_dpm_2": "dpm_2",
    "k_dpm_2_a": "dpm_2_a",
    "dpmsingle": "dpmsolver++",
}
SAMPLER_NAMES = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                 "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
ANCESTRAL = ("euler_a", "dpm_2_a")


def resolve_sampler(name, option="--sampler"):
    """Canonical sampler name for a kohya name or alias; UserError listing the valid names otherwise."""
    key = str(name).strip().lower()
    if key not in SAMPLER_NAMES:
        raise UserError(f"{option}: unknown sampler {name!r}; expected one of: {', '.join(SAMPLER_NAMES)}")
    return ALIASES.get(key, key)


def supports_karras(name):
    return resolve_sampler(name) not in ("ddim", "pndm")


def _k_denoiser(model, v_prediction):
    """x0 estimate from sigma-space latents: the model sees x / sqrt(sigma^2 + 1) at timestep t."""

    def denoise(x, sigma, t):
        c_in = 1.0 / np.sqrt(sigma**2 + 1.0)
        out = model((x * c_in).astype(np.float32), float(t))
        if v_prediction:
            return out * (-sigma * c_in) + x * c_in**2
        return x - sigma * out

    return denoise


def sample(name, model, noise, schedule: NoiseSchedule, steps, *, v_prediction=False, karras=False,
           noise_fn=None, clip_sample=False, steps_offset=1):
    """Run sampler `name` for `steps` steps from unit Gaussian `noise`; returns float32 latents.

    noise_fn(shape) supplies the fresh noise of ancestral samplers (per-image seeded in the pipeline).
    clip_sample (DDIM only) clamps the x0 estimate to [-1, 1] as kohya's generator does.
    """
    canonical = resolve_sampler(name)
    steps = int(steps)
    if not 1 <= steps <= schedule.num_train_timesteps:
        raise UserError(f"--steps: expected 1..{schedule.num_train_timesteps}, got {steps}")
    if canonical in ANCESTRAL and noise_fn is None:
        raise ValueError(f"sampler {canonical} needs noise_fn for its per-step noise")
    x = np.asarray(noise, dtype=np.float32)

    def predict(x_t, t):
        return model(np.asarray(x_t, np.float32), float(t))

    if canonical == "ddim":
        out = vp_samplers.ddim(predict, x, schedule, steps, v_prediction, steps_offset, clip_sample)
    elif canonical == "pndm":
        out = vp_samplers.pndm(predict, x, schedule, steps, v_prediction, steps_offset)
    elif canonical in ("dpmsolver", "dpmsolver++"):
        plan = dpm_solver_plan(schedule, steps, karras=karras, final_sigma_min=canonical == "dpmsolver")
        out = vp_samplers.dpm_solver_multistep(predict, x, plan, v_prediction, algorithm=canonical)
    else:
        fn, round_karras = _K_SAMPLERS[canonical]
        plan = k_plan(schedule, steps, karras=karras, round_karras_timesteps=round_karras)
        out = fn(_k_denoiser(model, v_prediction), x * plan.init_sigma, plan, noise_fn)
    return np.asarray(out, dtype=np.float32)


class PerImageNoise:
    """Gaussian noise where every image (batch row) draws from its own seeded generator.

    The same seed gives the same image whatever the batch it is generated in.
    """

    def __init__(self, seeds):
        self.generators = [np.random.Generator(np.random.PCG64(int(s))) for s in seeds]

    def __call__(self, shape):
        rows = [g.standard_normal(tuple(shape[1:])) for g in self.generators]
        return np.stack(rows).astype(np.float32)
