"""The forward half of a training step: text conditioning, noising, UNet, target, weighted loss.

One Cell for every family; SDXL-only inputs (second token ids, size conditioning) are dummies elsewhere,
and the `sdxl` flag is a Python constant, so each family compiles to its own straight-line graph.
`weighted_captions` (kohya's --weighted_captions) adds one input, the (B, 75k+2) weight of each context
position; without it the graph and its inputs are what they were.
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
        self.weighted_captions = weighted_captions

    def construct(self, latents, noise, timesteps, loss_weights, ids1, ids2, time_ids, caption_weights=None):
        context, pooled = self.conditioner(ids1, ids2)
        if self.weighted_captions:
            context = weight_context(context, caption_weights)
        noisy = self.targets.noisy(latents, noise, timesteps)
        t = ops.cast(timesteps, ms.float32)
        if self.sdxl:
            prediction = self.unet(noisy, t, context, pooled, time_ids)
        else:
            prediction = self.unet(noisy, t, context)
        prediction = ops.cast(prediction, ms.float32)  # a fp16/bf16 UNet's output; the loss is fp32
        target = self.targets.target(latents, noise, timesteps)
        return self.targets(prediction, target, timesteps, loss_weights)
