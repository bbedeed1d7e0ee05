"""The compiled UNet call of one sampling step, with classifier-free guidance.

One GRAPH_MODE Cell runs the UNet once per step on the concatenated [uncond, cond] batch and combines the
two halves (uncond + scale * (cond - uncond)); the guidance scale is a tensor input so changing it does not
recompile. `make_model_fn` wraps it as the numpy `model(x_in, t)` the samplers call.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops


class GuidedUNet(nn.Cell):
    """SD1/SD2: construct(x (B,4,h,w), t (1,), context (2B or B, S, D), scale ()) -> guided output."""

    def __init__(self, unet, guided):
        super().__init__()
        self.unet = unet
        self.guided = guided

    def construct(self, x, t, context, scale):
        if not self.guided:
            return self.unet(x, t, context)
        out = self.unet(ops.concat((x, x), axis=0), t, context)
        uncond, cond = ops.split(out, x.shape[0], axis=0)
        return uncond + scale * (cond - uncond)


class GuidedUNetXL(nn.Cell):
    """SDXL: as GuidedUNet plus pooled text embeddings and size/crop time_ids for each half."""

    def __init__(self, unet, guided):
        super().__init__()
        self.unet = unet
        self.guided = guided

    def construct(self, x, t, context, scale, text_embeds, time_ids):
        if not self.guided:
            return self.unet(x, t, context, text_embeds, time_ids)
        out = self.unet(ops.concat((x, x), axis=0), t, context, text_embeds, time_ids)
        uncond, cond = ops.split(out, x.shape[0], axis=0)
        return uncond + scale * (cond - uncond)


def make_model_fn(unet, context, scale, text_embeds=None, time_ids=None, cells=None):
    """`model(x_in, t) -> guided raw output` in numpy for the samplers.

    context: (2B, S, D) [uncond; cond] when scale > 1 (guidance on, as diffusers), else (B, S, D) cond only.
    cells: an optional dict reused across calls so each guided/unguided Cell compiles once.
    """
    guided = scale > 1.0
    xl = text_embeds is not None
    key = ("xl" if xl else "sd", guided, id(unet))
    cells = {} if cells is None else cells
    if key not in cells:
        cells[key] = (GuidedUNetXL if xl else GuidedUNet)(unet, guided)
    cell = cells[key]
    context_t = ms.Tensor(np.ascontiguousarray(context, dtype=np.float32))
    scale_t = ms.Tensor(np.float32(scale))
    extra = ()
    if xl:
        extra = (ms.Tensor(np.ascontiguousarray(text_embeds, np.float32)),
                 ms.Tensor(np.ascontiguousarray(time_ids, np.float32)))

    def model(x_in, t):
        x_t = ms.Tensor(np.ascontiguousarray(x_in, dtype=np.float32))
        t_t = ms.Tensor(np.array([t], dtype=np.float32))
        return cell(x_t, t_t, context_t, scale_t, *extra).asnumpy()

    return model
