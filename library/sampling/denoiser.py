"""The UNet call of one sampling step, with classifier-free guidance.

The UNet Cell (compiled in GRAPH_MODE on its first call, reused for every step and batch of the same
shape) runs once per step on the concatenated [uncond, cond] batch; the two halves are combined as
uncond + scale * (cond - uncond) on the host, which costs nothing next to the UNet and keeps the scale out
of the graph (one compiled graph serves every scale).
"""
import mindspore as ms
import numpy as np


def make_model_fn(unet, context, scale, text_embeds=None, time_ids=None):
    """`model(x_in, t) -> guided raw output` in numpy for the samplers.

    context: (2B, S, D) [uncond; cond] when scale > 1 (guidance on, as diffusers), else (B, S, D) cond only;
    text_embeds / time_ids (SDXL) in the same layout.
    """
    guided = scale > 1.0
    context_t = ms.Tensor(np.ascontiguousarray(context, dtype=np.float32))
    extra = ()
    if text_embeds is not None:
        extra = (ms.Tensor(np.ascontiguousarray(text_embeds, np.float32)),
                 ms.Tensor(np.ascontiguousarray(time_ids, np.float32)))

    def model(x_in, t):
        x_in = np.asarray(x_in, dtype=np.float32)
        batch = np.concatenate([x_in, x_in]) if guided else x_in
        t_t = ms.Tensor(np.array([t], dtype=np.float32))
        out = unet(ms.Tensor(np.ascontiguousarray(batch)), t_t, context_t, *extra).asnumpy()
        if not guided:
            return out
        uncond, cond = out[: len(x_in)], out[len(x_in):]
        return uncond + np.float32(scale) * (cond - uncond)

    return model
