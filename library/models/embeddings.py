"""Timestep and SDXL size/crop conditioning embeddings (diffusers names and math)."""
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor

from .layers import Linear

# primitives: cheaper to compile than the functional wrappers
_concat_last = ops.Concat(axis=-1)
_cos = ops.Cos()
_sin = ops.Sin()
_reshape = ops.Reshape()


def timestep_frequencies(embedding_dim, downscale_freq_shift=0.0, max_period=10000):
    """exp(-ln(max_period) * i / (half - shift)) for i < half, as float32 numpy (diffusers' exponent)."""
    half = embedding_dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float32) / (half - downscale_freq_shift)
    return np.exp(exponent).astype(np.float32)


class Timesteps(nn.Cell):
    """Sinusoidal embedding of a 1-D tensor of (possibly fractional) timesteps -> (N, num_channels).

    flip_sin_to_cos puts cos first (every SD model); odd sizes get one zero column at the end.
    """

    def __init__(self, num_channels, flip_sin_to_cos=True, downscale_freq_shift=0.0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freqs = Tensor(timestep_frequencies(num_channels, downscale_freq_shift)[None, :])

    def construct(self, timesteps):
        args = _reshape(timesteps.astype(ms.float32), (-1, 1)) * self.freqs
        if self.flip_sin_to_cos:
            emb = _concat_last((_cos(args), _sin(args)))
        else:
            emb = _concat_last((_sin(args), _cos(args)))
        if self.num_channels % 2 == 1:
            emb = _concat_last((emb, ops.zeros((emb.shape[0], 1), emb.dtype)))
        return emb


class TimestepEmbedding(nn.Cell):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding with act_fn='silu', no post activation)."""

    def __init__(self, in_channels, time_embed_dim, out_dim=None):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = Linear(time_embed_dim, out_dim or time_embed_dim)

    def construct(self, sample):
        return self.linear_2(self.act(self.linear_1(sample)))


def text_time_embedding(add_time_proj, add_embedding, text_embeds, time_ids):
    """(B, pooled) and (B, 6) -> (B, time_embed_dim): the term SDXL adds to the timestep embedding."""
    b = time_ids.shape[0]
    time_embeds = _reshape(add_time_proj(_reshape(time_ids, (-1,))), (b, -1))
    add_embeds = _concat_last((text_embeds.astype(time_embeds.dtype), time_embeds))
    return add_embedding(add_embeds)
