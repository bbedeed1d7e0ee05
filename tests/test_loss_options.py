"""kohya's loss options in the compiled loss (library/diffusion/training.py) against a torch reference written
here from kohya v0.10.1 (train_util.get_huber_threshold_if_needed / conditional_loss, custom_train_functions
apply_snr_weight / scale_v_prediction_loss_like_noise_prediction / add_v_prediction_like_loss /
apply_debiased_estimation / apply_masked_loss, train_network.process_batch's order) on a diffusers
DDPMScheduler. Each configuration compiles its own small graph in GRAPH_MODE."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from mindspore import nn

from library.diffusion.schedule import make_schedule
from library.diffusion.training import DiffusionTargets, LossOptions

TIMESTEPS = np.array([0, 1, 250, 517, 998, 999], np.int64)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


# ------------------------------------------------------------------ the reference (kohya's code, in torch)


def kohya_scheduler(zero_terminal_snr=False):
    """kohya's get_noise_scheduler: all_snr prepared first, then (optionally) the zero-terminal-SNR fix."""
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          clip_sample=False)
    ac = sched.alphas_cumprod
    sched.all_snr = (torch.sqrt(ac) / torch.sqrt(1.0 - ac)) ** 2
    if zero_terminal_snr:
        sqrt_bar = sched.alphas_cumprod.sqrt()
        first, last = sqrt_bar[0].clone(), sqrt_bar[-1].clone()
        sqrt_bar = (sqrt_bar - last) * first / (first - last)
        bar = sqrt_bar ** 2
        alphas = torch.cat([bar[0:1], bar[1:] / bar[:-1]])
        betas = 1 - alphas
        sched.betas, sched.alphas = betas, 1.0 - betas
        sched.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return sched


def ref_huber_c(o, t, sched):
    if o.loss_type not in ("huber", "smooth_l1"):
        return None
    if o.huber_schedule == "exponential":
        alpha = -math.log(o.huber_c) / sched.config.num_train_timesteps
        return torch.exp(-alpha * t) * o.huber_scale
    if o.huber_schedule == "snr":
        ac = torch.index_select(sched.alphas_cumprod, 0, t)
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - o.huber_c) / (1 + sigmas) ** 2 + o.huber_c
    return torch.full((t.shape[0],), o.huber_c * o.huber_scale)


def ref_elementwise(pred, target, loss_type, c):
    if loss_type == "l2":
        return torch.nn.functional.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(pred, target, reduction="none")
    c = c.view(-1, 1, 1, 1)
    if loss_type == "huber":
        return 2 * c * (torch.sqrt((pred - target) ** 2 + c ** 2) - c)
    return 2 * (torch.sqrt((pred - target) ** 2 + c ** 2) - c)


def ref_snr_scale(t, sched):
    snr = torch.stack([sched.all_snr[i] for i in t])
    snr = torch.minimum(snr, torch.ones_like(snr) * 1000)
    return snr / (snr + 1)


def ref_loss(o, pred, target, t, weights, sched, v_prediction, mask_image=None):
    """train_network.process_batch from the element-wise loss to loss.mean()."""
    loss = ref_elementwise(pred.float(), target.float(), o.loss_type, ref_huber_c(o, t, sched))
    if mask_image is not None:  # apply_masked_loss with alpha masks
        mask = torch.nn.functional.interpolate(mask_image.unsqueeze(1), size=loss.shape[2:], mode="area")
        loss = loss * mask
    loss = loss.mean(dim=[1, 2, 3]) * weights
    if o.min_snr_gamma:
        snr = torch.stack([sched.all_snr[i] for i in t])
        clipped = torch.minimum(snr, torch.full_like(snr, o.min_snr_gamma))
        loss = loss * (torch.div(clipped, snr + 1) if v_prediction else torch.div(clipped, snr))
    if o.scale_v_pred_loss_like_noise_pred:
        loss = loss * ref_snr_scale(t, sched)
    if o.v_pred_like_loss:
        loss = loss + loss / ref_snr_scale(t, sched) * o.v_pred_like_loss
    if o.debiased_estimation_loss:
        snr = torch.minimum(torch.stack([sched.all_snr[i] for i in t]), torch.ones(len(t)) * 1000)
        loss = (1 / (snr + 1) if v_prediction else 1 / torch.sqrt(snr)) * loss
    return loss.mean()


# ------------------------------------------------------------------ ours, compiled


class LossProbe(nn.Cell):
    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def construct(self, latents, noise, timesteps, prediction, loss_weights, mask):
        noisy = self.targets.noisy(latents, noise, timesteps)
        target = self.targets.target(latents, noise, timesteps)
        return noisy, target, self.targets(prediction, target, timesteps, loss_weights, mask)


def _inputs(seed=0, hw=(6, 5)):
    rng = np.random.default_rng(seed)
    shape = (len(TIMESTEPS), 4) + hw
    latents, noise = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    # predictions close to and far from the target, so both sides of the Huber threshold are used
    pred = (noise + rng.standard_normal(shape) * rng.choice([0.02, 2.0], size=shape)).astype(np.float32)
    weights = rng.choice([1.0, 0.5], size=len(TIMESTEPS)).astype(np.float32)
    mask_image = rng.random((len(TIMESTEPS), hw[0] * 8, hw[1] * 8)).astype(np.float32)
    return latents, noise, pred, weights, mask_image


def run_case(options, v_prediction=False, zero_terminal_snr=False, masked=False):
    from library.training.masks import loss_mask

    latents, noise, pred, weights, mask_image = _inputs()
    targets = DiffusionTargets(make_schedule(zero_terminal_snr=zero_terminal_snr), v_prediction=v_prediction,
                               options=options, snr_schedule=make_schedule())
    targets.set_masked(masked)
    mask = loss_mask({"alpha_masks": mask_image}, latents.shape) if masked else np.ones_like(latents)
    noisy, target, loss = LossProbe(targets)(*(ms.Tensor(a) for a in (latents, noise, TIMESTEPS.astype(np.int32),
                                                                        pred, weights, mask)))
    sched = kohya_scheduler(zero_terminal_snr)
    t = torch.from_numpy(TIMESTEPS)
    tl, tn = torch.from_numpy(latents), torch.from_numpy(noise)
    ref_target = sched.get_velocity(tl, tn, t) if v_prediction else tn
    expected = ref_loss(options, torch.from_numpy(pred), ref_target, t, torch.from_numpy(weights), sched,
                        v_prediction, torch.from_numpy(mask_image) if masked else None)
    return (noisy.asnumpy(), target.asnumpy(), float(loss.asnumpy())), \
        (sched.add_noise(tl, tn, t).numpy(), ref_target.numpy(), float(expected))


LOSS_CASES = [("l2", "snr"), ("l1", "snr")] + [(kind, schedule) for kind in ("huber", "smooth_l1")
                                              for schedule in ("constant", "exponential", "snr")]


@pytest.mark.parametrize("loss_type,huber_schedule", LOSS_CASES)
def test_element_wise_losses_and_huber_schedules(loss_type, huber_schedule):
    options = LossOptions(loss_type=loss_type, huber_schedule=huber_schedule, huber_c=0.15, huber_scale=1.7)
    (_, _, ours), (_, _, ref) = run_case(options)
    assert abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)


@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_masked_loss_area_resized_alpha_mask(loss_type):
    options = LossOptions(loss_type=loss_type, huber_schedule="exponential", masked=True)
    (_, _, ours), (_, _, ref) = run_case(options, masked=True)
    assert abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)
    (_, _, unmasked), _ = run_case(LossOptions(loss_type=loss_type, huber_schedule="exponential"))
    assert abs(unmasked - ours) > 1e-3 * abs(ref)  # the mask changes the loss


@pytest.mark.parametrize("v_prediction,options", [
    (True, LossOptions(min_snr_gamma=5.0)),  # min-SNR combined with v-prediction: min(snr, g) / (snr + 1)
    (False, LossOptions(min_snr_gamma=1.0, debiased_estimation_loss=True)),
    (True, LossOptions(debiased_estimation_loss=True)),
    (True, LossOptions(scale_v_pred_loss_like_noise_pred=True, min_snr_gamma=5.0)),
    (False, LossOptions(v_pred_like_loss=0.3, loss_type="smooth_l1", huber_schedule="snr")),
    (True, LossOptions(scale_v_pred_loss_like_noise_pred=True, debiased_estimation_loss=True, loss_type="l1")),
])
def test_snr_based_weights_in_kohya_order(v_prediction, options):
    (_, target, ours), (_, ref_target, ref) = run_case(options, v_prediction=v_prediction)
    assert _rel(target, ref_target) < 1e-5
    assert abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)


@pytest.mark.parametrize("v_prediction", [True, False])
def test_zero_terminal_snr_in_training(v_prediction):
    """The noise is added with the rescaled schedule (t=999 is pure noise), while the SNR weights keep kohya's
    all_snr of the original schedule (prepared before the fix); the snr Huber schedule sees the rescaled one."""
    options = LossOptions(loss_type="huber", huber_schedule="snr", min_snr_gamma=5.0,
                          debiased_estimation_loss=True)
    (noisy, target, ours), (ref_noisy, ref_target, ref) = run_case(options, v_prediction, zero_terminal_snr=True)
    assert _rel(noisy, ref_noisy) < 1e-5 and _rel(target, ref_target) < 1e-5
    latents, noise = _inputs()[:2]
    np.testing.assert_allclose(noisy[-1], noise[-1], atol=1e-6)  # t = 999: no signal left
    assert np.isfinite(ours) and abs(ours - ref) <= 1e-5 * abs(ref), (ours, ref)
    (plain_noisy, _, plain), _ = run_case(options, v_prediction)
    assert _rel(plain_noisy, noisy) > 1e-3 and abs(plain - ours) > 1e-4 * abs(ref)


def test_options_from_parsed_arguments():
    import train_network
    from library.training import session

    parser = session.build_parser("test", True, train_network.add_network_arguments)
    defaults = LossOptions.from_args(parser.parse_args([]))
    assert defaults == LossOptions()  # kohya's defaults: l2, snr schedule, huber_c 0.1, scale 1.0
    args = parser.parse_args(["--loss_type", "smooth_l1", "--huber_schedule", "constant", "--huber_c", "0.2",
                              "--huber_scale", "3", "--min_snr_gamma", "5", "--v_pred_like_loss", "0.1",
                              "--debiased_estimation_loss", "--ip_noise_gamma", "0.1"])
    assert LossOptions.from_args(args) == LossOptions("smooth_l1", "constant", 0.2, 3.0, 5.0, False, 0.1, True,
                                                      False, True)


class EchoUNet(nn.Cell):
    """Predicts its noisy input: the loss then shows which noise the input and the target were made with."""

    def construct(self, sample, t, context):
        return sample * 1.0


class NoText(nn.Cell):
    def construct(self, ids1, ids2):
        return ids1, None


def test_objective_inputs_input_noise_and_mask():
    """--ip_noise_gamma: the UNet input is made with `input_noise`, the target keeps `noise`; the mask comes
    last (objective.py's input order), and step_inputs builds both from the batch."""
    from library.training.masks import loss_mask
    from library.training.objective import DiffusionObjective

    latents, noise, _, weights, mask_image = _inputs(seed=3)
    input_noise = (noise + 0.1 * np.random.default_rng(4).standard_normal(noise.shape)).astype(np.float32)
    options = LossOptions(loss_type="smooth_l1", huber_schedule="constant", input_perturbation=True, masked=True)
    objective = DiffusionObjective(EchoUNet(), NoText(), DiffusionTargets(make_schedule(), options=options), False)
    assert objective.extra_inputs == ("input_noise", "mask")
    ids = ms.Tensor(np.zeros((len(TIMESTEPS), 77), np.int32))
    mask = loss_mask({"alpha_masks": mask_image}, latents.shape)
    ours = objective(ms.Tensor(latents), ms.Tensor(noise), ms.Tensor(TIMESTEPS.astype(np.int32)),
                     ms.Tensor(weights), ids, ids, ms.Tensor(np.zeros((len(TIMESTEPS), 6), np.float32)),
                     ms.Tensor(input_noise), ms.Tensor(mask))
    sched = kohya_scheduler()
    t = torch.from_numpy(TIMESTEPS)
    noisy = sched.add_noise(torch.from_numpy(latents), torch.from_numpy(input_noise), t)
    expected = ref_loss(options, noisy, torch.from_numpy(noise), t, torch.from_numpy(weights), sched, False,
                        torch.from_numpy(mask_image))
    assert abs(float(ours.asnumpy()) - float(expected)) <= 1e-5 * abs(float(expected))


def test_trainers_build_the_loss_from_their_options():
    """What a trainer compiles: --zero_terminal_snr noises with the rescaled schedule and keeps the original SNR
    table for the weights (kohya's order); the Huber table and switches come from the options."""
    import train_network
    from library.models.bundle import build_bundle
    from library.networks.training import LoRATraining
    from library.training import session

    parser = session.build_parser("test", True, train_network.add_network_arguments)
    args = parser.parse_args(["--zero_terminal_snr", "--loss_type", "huber", "--huber_schedule", "exponential",
                              "--debiased_estimation_loss", "--ip_noise_gamma", "0.1", "--seed", "1"])
    method = LoRATraining(args, build_bundle("tiny-sd15"))
    targets = method.objective.targets
    rescaled, original = make_schedule(zero_terminal_snr=True), make_schedule()
    assert _rel(targets.sqrt_alpha.asnumpy(), np.sqrt(rescaled.alphas_cumprod)) < 1e-6
    assert targets.sqrt_alpha.asnumpy()[-1] == 0.0
    assert _rel(targets.snr_table.asnumpy(), original.snr) < 1e-6
    t = np.arange(1000)
    assert _rel(targets.huber_table.asnumpy(), np.exp(t * np.log(0.1) / 1000)) < 1e-6
    assert targets.debiased_estimation and not targets.masked
    assert method.objective.extra_inputs == ("input_noise",)
    method.set_loss_mask(True)
    assert method.objective.extra_inputs == ("input_noise", "mask")
