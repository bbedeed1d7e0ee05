"""The forward half of a training step: text conditioning, noising, UNet, target, weighted loss.

One Cell for every family; SDXL-only inputs (second token ids, size conditioning) are dummies elsewhere,
and the `sdxl` flag is a Python constant, so each family compiles to its own straight-line graph.

Inputs: latents, noise (the target's), timesteps, loss_weights, ids1, ids2, time_ids, then the optional
inputs the options ask for, in this order (`extra_inputs`); without them the graph and its inputs are the
plain ones:
- `caption_weights` (--weighted_captions): the (B, 75k+2) weight of each context position,
- `input_noise` (--ip_noise_gamma): the noise the UNet input is made with (the target keeps `noise`),
- `mask` (masked loss): (B,C,h,w) per-element loss weights.
"""
from mindspore import nn, ops
import mindspore as ms

from ..models.text_conditioning import weight_context


class DiffusionObjective(nn.Cell):
    def __init__(self, unet, conditioner, targets, sdxl, weighted_captions=False):
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner
        self.targets = targets
        self.sdxl = sdxl
        self.weighted_captions = bool(weighted_captions)

    @property
    def extra_inputs(self):
        names = []
        if self.weighted_captions:
            names.append("caption_weights")
        if self.targets.input_perturbation:
            names.append("input_noise")
        if self.targets.masked:
            names.append("mask")
        return tuple(names)

    def construct(self, latents, noise, timesteps, loss_weights, ids1, ids2, time_ids, *extras):
        context, pooled = self.conditioner(ids1, ids2)
        index = 0
        if self.weighted_captions:
            context = weight_context(context, extras[index])
            index += 1
        input_noise = noise
        if self.targets.input_perturbation:
            input_noise = extras[index]
            index += 1
        mask = extras[index] if self.targets.masked else None
        noisy = self.targets.noisy(latents, input_noise, timesteps)
        t = ops.cast(timesteps, ms.float32)
        if self.sdxl:
            prediction = self.unet(noisy, t, context, pooled, time_ids)
        else:
            prediction = self.unet(noisy, t, context)
        prediction = ops.cast(prediction, ms.float32)  # a fp16/bf16 UNet's output; the loss is fp32
        target = self.targets.target(latents, noise, timesteps)
        return self.targets(prediction, target, timesteps, loss_weights, mask)
