"""k-diffusion samplers in sigma space: x = x0 + sigma * eps.

Each is a short function of (denoise, x, plan, noise_fn). `denoise(x, sigma, t)` returns the predicted
clean latents x0 for latents x at noise level sigma (model timestep t); `noise_fn(shape)` draws the fresh
Gaussian noise of the ancestral samplers. The update rules match diffusers' Euler/EulerAncestral/Heun/LMS/
KDPM2/KDPM2Ancestral discrete schedulers step for step.
"""
import numpy as np

from .sigma_plans import SigmaPlan


def _derivative(x, x0, sigma):
    return (x - x0) / sigma


def _ancestral_split(sigma_from, sigma_to):
    """Split a step into a deterministic part down to sigma_down and fresh noise of std sigma_up."""
    sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
    sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def euler(denoise, x, plan: SigmaPlan, noise_fn=None):
    sigmas, ts = plan.sigmas, plan.timesteps
    for i in range(len(ts)):
        d = _derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i])
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(denoise, x, plan: SigmaPlan, noise_fn):
    sigmas, ts = plan.sigmas, plan.timesteps
    for i in range(len(ts)):
        d = _derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i])
        sigma_down, sigma_up = _ancestral_split(sigmas[i], sigmas[i + 1])
        x = x + d * (sigma_down - sigmas[i])
        x = x + noise_fn(x.shape) * sigma_up
    return x


def heun(denoise, x, plan: SigmaPlan, noise_fn=None):
    """Heun's 2nd order method; the last step (to sigma 0) is an Euler step."""
    sigmas, ts = plan.sigmas, plan.timesteps
    for i in range(len(ts)):
        d = _derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i])
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_next = x + d * dt
        d_next = _derivative(x_next, denoise(x_next, sigmas[i + 1], ts[i + 1]), sigmas[i + 1])
        x = x + (d + d_next) / 2 * dt
    return x


def _geometric_mean(a, b):
    return np.exp((np.log(a) + np.log(b)) / 2)


def dpm_2(denoise, x, plan: SigmaPlan, noise_fn=None):
    """DPM-Solver-2 (midpoint in log sigma); the last step is an Euler step."""
    sigmas, ts = plan.sigmas, plan.timesteps
    for i in range(len(ts)):
        d = _derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + d * (0.0 - sigmas[i])
            continue
        sigma_mid = _geometric_mean(sigmas[i], sigmas[i + 1])
        x_mid = x + d * (sigma_mid - sigmas[i])
        d_mid = _derivative(x_mid, denoise(x_mid, sigma_mid, plan.sigma_to_t(sigma_mid)), sigma_mid)
        x = x + d_mid * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(denoise, x, plan: SigmaPlan, noise_fn):
    """Ancestral DPM-Solver-2: midpoint step down to sigma_down, then fresh noise of std sigma_up."""
    sigmas, ts = plan.sigmas, plan.timesteps
    for i in range(len(ts)):
        d = _derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i])
        sigma_down, sigma_up = _ancestral_split(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + d * (0.0 - sigmas[i])
            continue
        sigma_mid = _geometric_mean(sigmas[i], sigma_down)
        x_mid = x + d * (sigma_mid - sigmas[i])
        d_mid = _derivative(x_mid, denoise(x_mid, sigma_mid, plan.sigma_to_t(sigma_mid)), sigma_mid)
        x = x + d_mid * (sigma_down - sigmas[i])
        x = x + noise_fn(x.shape) * sigma_up
    return x


def _lms_coefficient(sigmas, i, order, j):
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of derivative i-j (exact)."""
    poly = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            poly *= np.poly1d([1.0, -sigmas[i - k]]) / (sigmas[i - j] - sigmas[i - k])
    antiderivative = poly.integ()
    return antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])


def lms(denoise, x, plan: SigmaPlan, noise_fn=None, order=4):
    """Linear multistep over the last `order` derivatives (Lagrange interpolation in sigma)."""
    sigmas, ts = plan.sigmas, plan.timesteps
    history = []
    for i in range(len(ts)):
        history.append(_derivative(x, denoise(x, sigmas[i], ts[i]), sigmas[i]))
        history = history[-order:]
        current = min(i + 1, order)
        for j in range(current):
            x = x + _lms_coefficient(sigmas, i, current, j) * history[-1 - j]
    return x
