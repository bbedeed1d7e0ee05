"""UNet forward + backward: loss = mean(prediction^2), gradient w.r.t. the encoder hidden states only (as in
textual inversion: a small trainable input, no parameter gradients), batch 1, timestep 500.

Ours: the UNet Cell under `ms.value_and_grad` in one compiled Cell; ref: diffusers' UNet2DConditionModel with
`backward()`. `checkpointing=True` recomputes activations per block on both sides (ours:
`enable_gradient_checkpointing`, diffusers: `enable_gradient_checkpointing`).
"""
import os

import numpy as np

from . import common


def prepare(folder, spec_name, latent=None, checkpointing=False):
    spec = common.spec_of(spec_name)
    common.save_random_models(spec, folder, parts=("unet",))
    side = latent or spec.sample_size
    rng = np.random.default_rng(0)
    arrays = {"sample": rng.standard_normal((1, 4, side, side)).astype(np.float32),
              "timesteps": np.array([500.0], np.float32),
              "context": rng.standard_normal((1, 77, spec.context_dim)).astype(np.float32),
              "text_embeds": np.zeros((1, 1), np.float32), "time_ids": np.zeros((1, 6), np.float32)}
    if spec.is_sdxl:
        arrays["text_embeds"] = rng.standard_normal((1, spec.text_encoders[1]["projection_dim"])).astype(np.float32)
        arrays["time_ids"] = np.array([[side * 8, side * 8, 0, 0, side * 8, side * 8]], np.float32)
    np.savez(os.path.join(folder, "inputs.npz"), **arrays)


def build(side, folder, spec_name, latent=None, checkpointing=False):
    spec = common.spec_of(spec_name)
    inputs = common.load_inputs(folder)
    return (_ours if side == "ours" else _ref)(spec, folder, inputs, checkpointing)


def _ours(spec, folder, inputs, checkpointing):
    import mindspore as ms
    from mindspore import nn
    from safetensors.numpy import load_file

    from library.models.layers import lazy_parameters
    from library.models.unet import UNet2DConditionModel
    from library.models.weights import load_state_dict

    with lazy_parameters():
        unet = UNet2DConditionModel(spec.unet)
    load_state_dict(unet, load_file(os.path.join(folder, "unet.safetensors")), source="unet.safetensors")
    for p in unet.get_parameters():
        p.requires_grad = False
    if checkpointing:
        unet.enable_gradient_checkpointing()
    sdxl = spec.is_sdxl

    class SquaredPrediction(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def construct(self, sample, timesteps, context, text_embeds, time_ids):
            if sdxl:
                prediction = self.model(sample, timesteps, context, text_embeds, time_ids)
            else:
                prediction = self.model(sample, timesteps, context)
            return (prediction ** 2).mean()

    class LossAndContextGrad(nn.Cell):
        def __init__(self, loss):
            super().__init__()
            self.value_and_grad = ms.value_and_grad(loss, grad_position=2)

        # explicit arguments: *args in a graph-mode construct broke the conv layer's custom bprop
        def construct(self, sample, timesteps, context, text_embeds, time_ids):
            return self.value_and_grad(sample, timesteps, context, text_embeds, time_ids)

    cell = LossAndContextGrad(SquaredPrediction(unet))
    args = [ms.Tensor(inputs[k]) for k in ("sample", "timesteps", "context", "text_embeds", "time_ids")]

    def step():
        loss, grad = cell(*args)
        grad.asnumpy()  # wait for the gradient too
        return float(loss.asnumpy())

    return step


def _ref(spec, folder, inputs, checkpointing):
    import torch

    unet = common.load_torch_models(spec, folder, parts=("unet",))["unet"]
    if checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers only checkpoints in training mode (no dropout in SD UNets)
    extra = {}
    if spec.is_sdxl:
        extra["added_cond_kwargs"] = {"text_embeds": torch.from_numpy(inputs["text_embeds"]),
                                      "time_ids": torch.from_numpy(inputs["time_ids"])}
    sample, timesteps = torch.from_numpy(inputs["sample"]), torch.from_numpy(inputs["timesteps"])

    def step():
        context = torch.from_numpy(inputs["context"]).requires_grad_(True)
        loss = unet(sample, timesteps, context, **extra).sample.pow(2).mean()
        loss.backward()
        return float(loss.detach())

    return step
