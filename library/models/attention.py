"""Scaled dot-product attention core shared by the UNet, VAE and CLIP.

NOTE: first version - plain softmax attention. The CPU custom-backward formulation and Ascend flash
attention are to be filled in here without changing the interface.
"""
import math

from mindspore import nn, ops


class AttentionCore(nn.Cell):
    """softmax(Q K^T / sqrt(d) [+ mask]) V for (B, S, heads*d) inputs; returns (B, Sq, heads*d)."""

    def __init__(self, heads, head_dim):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.softmax = ops.Softmax(-1)

    def _split(self, x):
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, q, k, v, mask=None):
        b, sq, _ = q.shape
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = self.qk(q, k) * self.scale
        if mask is not None:
            scores = scores + mask
        out = self.pv(self.softmax(scores), v)
        return out.transpose(0, 2, 1, 3).reshape(b, sq, self.heads * self.head_dim)
