"""Our UNet against diffusers' UNet2DConditionModel on the same weights and inputs (fp32)."""
import numpy as np
import mindspore as ms
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from mindspore import nn

from library.models.configs import get_spec
from library.models.unet import UNet2DConditionModel
from library.models.weights import load_state_dict

TOLERANCE = 1e-4


def rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def torch_unet(spec, seed):
    torch.manual_seed(seed)
    model = TorchUNet(**spec.unet).eval()
    with torch.no_grad():  # move norms and biases off their 1/0 initial values so every term is exercised
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def our_unet(spec, torch_model):
    model = UNet2DConditionModel(spec.unet)
    load_state_dict(model, {k: v.numpy() for k, v in torch_model.state_dict().items()}, source="diffusers")
    return model


def inputs(spec, seed, batch=2):
    rng = np.random.default_rng(seed)
    side = spec.sample_size
    found = {
        "sample": rng.standard_normal((batch, 4, side, side)).astype(np.float32),
        "timesteps": np.array([17.0, 803.5][:batch], np.float32),
        "context": rng.standard_normal((batch, 77, spec.context_dim)).astype(np.float32),
    }
    if spec.is_sdxl:
        pooled = spec.text_encoders[1]["projection_dim"]
        found["text_embeds"] = rng.standard_normal((batch, pooled)).astype(np.float32)
        # [orig_h, orig_w, crop_top, crop_left, target_h, target_w], different per sample
        found["time_ids"] = np.array([[64, 64, 0, 0, 64, 64], [96, 80, 16, 8, 64, 64]][:batch], np.float32)
    return found


def torch_forward(model, x):
    extra = {}
    if "time_ids" in x:
        extra["added_cond_kwargs"] = {"text_embeds": torch.tensor(x["text_embeds"]),
                                      "time_ids": torch.tensor(x["time_ids"])}
    return model(torch.tensor(x["sample"]), torch.tensor(x["timesteps"]), torch.tensor(x["context"]),
                 **extra).sample


def our_args(x):
    args = [ms.Tensor(x["sample"]), ms.Tensor(x["timesteps"]), ms.Tensor(x["context"])]
    if "time_ids" in x:
        args += [ms.Tensor(x["text_embeds"]), ms.Tensor(x["time_ids"])]
    return args


@pytest.mark.parametrize("name", ["tiny-sd21", "tiny-sdxl"])
def test_noise_prediction_matches_diffusers(name):
    spec = get_spec(name)
    reference = torch_unet(spec, seed=1)
    x = inputs(spec, seed=2)
    with torch.no_grad():
        expected = torch_forward(reference, x).numpy()
    got = our_unet(spec, reference)(*our_args(x)).asnumpy()
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= TOLERANCE


class WeightedOutput(nn.Cell):
    """sum(unet(...) * weights): a scalar whose gradient reaches every output element differently."""

    def __init__(self, unet, weights):
        super().__init__()
        self.unet = unet
        self.weights = ms.Tensor(weights)

    def construct(self, sample, timesteps, context):
        out = self.unet(sample, timesteps, context)
        return (out * self.weights).sum(), out


class ValueAndInputGrads(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ms.value_and_grad(net, grad_position=(0, 2), has_aux=True)

    def construct(self, sample, timesteps, context):
        return self.grad(sample, timesteps, context)


def test_sd15_output_and_input_gradients_match_torch_autograd_with_checkpointing():
    spec = get_spec("tiny-sd15")
    reference = torch_unet(spec, seed=3)
    x = inputs(spec, seed=4)
    weights = np.random.default_rng(5).standard_normal((2, 4, spec.sample_size, spec.sample_size)).astype(np.float32)

    sample = torch.tensor(x["sample"], requires_grad=True)
    context = torch.tensor(x["context"], requires_grad=True)
    out = reference(sample, torch.tensor(x["timesteps"]), context).sample
    (out * torch.tensor(weights)).sum().backward()

    ours = our_unet(spec, reference)
    ours.enable_gradient_checkpointing()  # recompute must not change values or gradients
    (_, got_out), (got_dsample, got_dcontext) = ValueAndInputGrads(WeightedOutput(ours, weights))(*our_args(x))
    assert rel_err(got_out.asnumpy(), out.detach().numpy()) <= TOLERANCE
    assert rel_err(got_dcontext.asnumpy(), context.grad.numpy()) <= TOLERANCE
    assert rel_err(got_dsample.asnumpy(), sample.grad.numpy()) <= TOLERANCE
