"""The model call of one sampling step, as the numpy function the samplers take.

The step Cell (compiled.GuidedUNetStep: UNet on the [uncond; cond] batch and the guidance combination, one
GRAPH_MODE graph reused for every step and batch of the same shape) runs once per step. The conditioning
stays on the device as Tensors for the whole batch; per step only the latents go in and the guided output
comes back.
"""
import mindspore as ms
import numpy as np

from .compiled import run_graph


def make_model_fn(step, context, scale, text_embeds=None, time_ids=None, negative_scale=None):
    """`model(x_in, t) -> guided raw output` in numpy for the samplers.

    step: a GuidedUNetStep (guided when scale > 1, as diffusers), or with `negative_scale` a
    NegativeScaleUNetStep. context: (2B, S, D) [uncond; cond] when guided, (3B, S, D) [negative; cond; uncond]
    with a negative scale, else (B, S, D) cond only; text_embeds / time_ids (SDXL) in the same layout.
    """
    fixed = [ms.Tensor(np.ascontiguousarray(context, dtype=np.float32)),
             ms.Tensor(np.float32(scale))]
    if negative_scale is not None:
        fixed.append(ms.Tensor(np.float32(negative_scale)))
    if text_embeds is not None:
        fixed += [ms.Tensor(np.ascontiguousarray(text_embeds, np.float32)),
                  ms.Tensor(np.ascontiguousarray(time_ids, np.float32))]

    def model(x_in, t):
        x_t = ms.Tensor(np.ascontiguousarray(x_in, dtype=np.float32))
        t_t = ms.Tensor(np.array([t], dtype=np.float32))
        return run_graph(step, x_t, t_t, *fixed).asnumpy()

    return model
