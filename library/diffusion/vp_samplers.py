"""Samplers on the variance-preserving latents x_t = sqrt(a) x0 + sqrt(1 - a) eps: DDIM, PLMS, DPM-Solver.

`predict(x, t)` returns the raw model output (epsilon or v) for latents x at timestep t; the functions turn
it into epsilon / x0 with the schedule. Update rules follow diffusers' DDIMScheduler (eta 0),
PNDMScheduler (skip_prk_steps) and DPMSolverMultistepScheduler.
"""
import numpy as np

from .schedule import NoiseSchedule
from .sigma_plans import SigmaPlan, leading_timesteps


def _eps_and_x0(output, x, alpha_bar, v_prediction):
    sa, sb = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if v_prediction:
        return sa * output + sb * x, sa * x - sb * output
    return output, (x - sb * output) / sa


def ddim(predict, x, schedule: NoiseSchedule, steps, v_prediction=False, steps_offset=1, clip_sample=False,
         clip_sample_range=1.0):
    """Deterministic DDIM (eta = 0) on diffusers' "leading" grid; clip_sample clamps the x0 estimate."""
    ac = schedule.alphas_cumprod
    ratio = schedule.num_train_timesteps // steps
    for t in leading_timesteps(steps, schedule.num_train_timesteps, steps_offset):
        prev = t - ratio
        a_prev = ac[prev] if prev >= 0 else 1.0  # set_alpha_to_one
        eps, x0 = _eps_and_x0(predict(x, t), x, ac[t], v_prediction)
        if clip_sample:
            x0 = np.clip(x0, -clip_sample_range, clip_sample_range)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps
    return x


def pndm(predict, x, schedule: NoiseSchedule, steps, v_prediction=False, steps_offset=1):
    """Pseudo linear multistep (PLMS): a 2nd-order start (one extra model call), then Adams-Bashforth 4.

    As diffusers, raw model outputs are combined first; a v output is turned into epsilon with the
    latents the transfer starts from.
    """
    ac = schedule.alphas_cumprod
    ratio = schedule.num_train_timesteps // steps

    def alpha(t):
        return ac[t] if t >= 0 else ac[0]  # diffusers' PNDM default set_alpha_to_one=False

    def transfer(x_t, output, t):
        """PNDM's transfer from t to t - ratio given a model output (equation 9 of the PNDM paper)."""
        a_t, a_prev = alpha(t), alpha(t - ratio)
        eps = np.sqrt(a_t) * output + np.sqrt(1.0 - a_t) * x_t if v_prediction else output
        denominator = a_t * np.sqrt(1.0 - a_prev) + np.sqrt(a_t * (1.0 - a_t) * a_prev)
        return np.sqrt(a_prev / a_t) * x_t - (a_prev - a_t) * eps / denominator

    history = []
    for n, t in enumerate(leading_timesteps(steps, schedule.num_train_timesteps, steps_offset)):
        out = predict(x, t)
        history.append(out)
        if n == 0:  # Heun-like start: average the outputs at t and t - ratio
            out = (out + predict(transfer(x, out, t), t - ratio)) / 2
        elif len(history) == 2:
            out = (3 * history[-1] - history[-2]) / 2
        elif len(history) == 3:
            out = (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
        else:
            history = history[-4:]
            out = (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4]) / 24
        x = transfer(x, out, t)
    return x


def _alpha_sigma(sigma):
    alpha = 1.0 / np.sqrt(sigma**2 + 1.0)
    return alpha, sigma * alpha


def dpm_solver_multistep(predict, x, plan: SigmaPlan, v_prediction=False, algorithm="dpmsolver++"):
    """DPM-Solver(++) 2M, midpoint form. 1st order: the first step, a last step to sigma 0, and (diffusers'
    lower_order_final) the last step of runs shorter than 15 steps.

    dpmsolver++ extrapolates x0 estimates, dpmsolver extrapolates epsilon estimates.
    """
    sigmas, ts = plan.sigmas, plan.timesteps
    data_prediction = algorithm == "dpmsolver++"
    previous = None
    for i in range(len(ts)):
        alpha_s, sig_s = _alpha_sigma(sigmas[i])
        eps, x0 = _eps_and_x0(predict(x, ts[i]), x, alpha_s**2, v_prediction)
        m0 = x0 if data_prediction else eps
        alpha_t, sig_t = _alpha_sigma(sigmas[i + 1])
        if sigmas[i + 1] == 0:
            x = x0 if data_prediction else (x - sig_s * eps) / alpha_s
            break
        h = np.log(alpha_t / sig_t) - np.log(alpha_s / sig_s)
        if previous is None or (i == len(ts) - 1 and len(ts) < 15):
            d1 = 0.0
        else:
            m1, lambda_prev = previous
            r = (np.log(alpha_s / sig_s) - lambda_prev) / h
            d1 = (m0 - m1) / r
        if data_prediction:
            phi = alpha_t * (np.exp(-h) - 1.0)
            x = sig_t / sig_s * x - phi * m0 - 0.5 * phi * d1
        else:
            phi = sig_t * (np.exp(h) - 1.0)
            x = alpha_t / alpha_s * x - phi * m0 - 0.5 * phi * d1
        previous = (m0, np.log(alpha_s / sig_s))
    return x
