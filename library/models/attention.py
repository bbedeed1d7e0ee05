"""Scaled dot-product attention core shared by the UNet, VAE and CLIP.

Formulation by device (one place, see docs/ARCHITECTURE.md):
- CPU: softmax attention with a custom backward. Autodiff of softmax reduces over the key axis, a slow
  ReduceSum on CPU; the backward below recomputes P and only reduces over the head dim
  (shared/MINDSPORE_CPU.md, point 4).
- Ascend: `flash_attention_score` when the inputs are fp16/bf16, there is no mask and the head dim fits
  (multiple of 16, <= 512; SD1.5's 40 does not, it keeps the plain path).
- Otherwise: plain softmax attention, differentiated by MindSpore.
"""
import math

import mindspore as ms
from mindspore import nn, ops

from .. import device

FLASH_HEAD_DIM_MAX = 512


def flash_attention_fits(head_dim):
    return head_dim % 16 == 0 and head_dim <= FLASH_HEAD_DIM_MAX


# Largest attention-probability block (B * heads * query rows * keys elements, 64 MB of fp32) the CPU path
# materialises at once; longer queries are processed in row blocks. SD1.5 at 64x64 latents has 8 x 4096 x 4096
# scores per self-attention (512 MB, and the backward needs three such tensors at once).
ATTENTION_BLOCK_ELEMENTS = 1 << 24


def query_blocks(batch_heads, sq, sk, max_elements):
    """(start, stop) row ranges of near-equal size whose score blocks hold at most `max_elements`.

    Written with plain arithmetic (no `max`, no comprehension): graph mode evaluates it at compile time.
    """
    rows = max_elements // (batch_heads * sk)
    if rows < 1:
        rows = 1
    if rows >= sq:
        return ((0, sq),)
    count = (sq + rows - 1) // rows
    rows = (sq + count - 1) // count
    blocks = ()
    for start in range(0, sq, rows):
        stop = start + rows
        if stop > sq:
            stop = sq
        blocks += ((start, stop),)
    return blocks


class SoftmaxAttention(nn.Cell):
    """softmax(Q K^T * scale [+ mask]) V on (B, N, S, D) tensors, with the CPU-friendly backward.

    dS = P * (dO V^T - rowsum(dO * O)), where rowsum(dO * O) == rowsum(P * dP) is a sum over D;
    dQ = dS K * scale, dK = dS^T (Q * scale), dV = P^T dO.
    `mask` (additive, broadcast to (B, N, Sq, Sk)) is a constant: its gradient is zero.
    Long queries run in row blocks (forward and backward; the same math, rows are independent) so that
    the probabilities never take more than `max_block_elements`; `Depend` edges chain the blocks so the
    runtime cannot schedule them side by side (which would hold every block's transients at once).
    """

    def __init__(self, scale, with_mask=False, max_block_elements=ATTENTION_BLOCK_ELEMENTS):
        super().__init__()
        self.scale = scale
        self.with_mask = with_mask
        self.max_block_elements = max_block_elements
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.tn = ops.BatchMatMul(transpose_a=True)
        self.softmax = ops.Softmax(-1)

    def _probs(self, q_scaled, k, mask):
        scores = self.qk(q_scaled, k)
        if self.with_mask:
            scores = scores + mask
        # softmax stays fp32 under mixed precision (a no-op cast in fp32)
        return self.softmax(scores.astype(ms.float32)).astype(q_scaled.dtype)

    def _blocks(self, q, k):
        return query_blocks(q.shape[0] * q.shape[1], q.shape[2], k.shape[2], self.max_block_elements)

    def _mask_rows(self, mask, start, stop):
        if self.with_mask and mask.ndim == 4 and mask.shape[2] > 1:
            return mask[:, :, start:stop]
        return mask

    def construct(self, q, k, v, mask):
        # the scale goes on Q (S x D), not on the S x S scores: one pass less over the largest tensor
        q_scaled = q * self.scale
        blocks = self._blocks(q, k)
        if len(blocks) == 1:
            return self.pv(self._probs(q_scaled, k, mask), v)
        outs = []
        for start, stop in blocks:
            rows = q_scaled[:, :, start:stop]
            if outs:
                rows = ops.depend(rows, outs[-1])
            outs.append(self.pv(self._probs(rows, k, self._mask_rows(mask, start, stop)), v))
        return ops.concat(outs, 2)

    def _block_grads(self, q_scaled, k, v_ones, mask, out, dout):
        p = self._probs(q_scaled, k, mask)
        dv = self.tn(p, dout)
        # dO V^T - rowsum(dO * O) as one matmul of [dO, -rowsum] and [V, 1]: a broadcasting Sub over the
        # S x S block would keep an index table of 16 bytes per element (see layers._bias_add)
        row = (dout * out).sum(-1, keepdims=True)
        ds = p * self.qk(ops.concat((dout, -row), -1), v_ones)
        return self.pv(ds, k) * self.scale, self.tn(ds, q_scaled), dv

    def bprop(self, q, k, v, mask, out, dout):
        q_scaled = q * self.scale
        blocks = self._blocks(q, k)
        v_ones = ops.concat((v, ops.ones(v.shape[:-1] + (1,), v.dtype)), -1)
        if len(blocks) == 1:
            dq, dk, dv = self._block_grads(q_scaled, k, v_ones, mask, out, dout)
            return dq, dk, dv, ops.zeros_like(mask)
        dqs = []
        dk = dv = None
        for start, stop in blocks:
            rows, out_rows, dout_rows = q_scaled[:, :, start:stop], out[:, :, start:stop], dout[:, :, start:stop]
            if dqs:
                # every block input waits for the previous block: otherwise the executor runs each block's
                # dO V^T (independent of the chain) up front and holds all of them at once
                previous = (dk, dv)
                rows = ops.depend(rows, previous)
                out_rows = ops.depend(out_rows, previous)
                dout_rows = ops.depend(dout_rows, previous)
            dq_rows, dk_part, dv_part = self._block_grads(
                rows, k, v_ones, self._mask_rows(mask, start, stop), out_rows, dout_rows)
            dqs.append(dq_rows)
            dk = dk_part if dk is None else dk + dk_part
            dv = dv_part if dv is None else dv + dv_part
        return ops.concat(dqs, 2), dk, dv, ops.zeros_like(mask)


class PlainAttention(nn.Cell):
    """The same math left to autodiff (accelerators, and the reference for the CPU path)."""

    def __init__(self, scale, with_mask=False):
        super().__init__()
        self.scale = scale
        self.with_mask = with_mask
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.softmax = ops.Softmax(-1)

    def construct(self, q, k, v, mask):
        scores = self.qk(q, k) * self.scale
        if self.with_mask:
            scores = scores + mask
        probs = self.softmax(scores.astype(ms.float32)).astype(v.dtype)  # softmax in fp32
        return self.pv(probs, v)


class AttentionCore(nn.Cell):
    """softmax(Q K^T / sqrt(d) [+ mask]) V for (B, S, heads*d) inputs; returns (B, Sq, heads*d).

    `mask` is additive (0 / large negative), broadcastable to (B, heads, Sq, Sk), e.g. (1, 1, S, S) causal.
    """

    def __init__(self, heads, head_dim):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        cell = SoftmaxAttention if device.is_cpu() else PlainAttention
        self.core = cell(self.scale, with_mask=False)
        self.core_masked = cell(self.scale, with_mask=True)
        self.use_flash = device.is_ascend() and flash_attention_fits(head_dim)
        self.no_mask = ms.Tensor(0.0, ms.float32)

    def _split(self, x):
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, q, k, v, mask=None):
        b, sq, _ = q.shape
        if self.use_flash and mask is None and q.dtype in (ms.float16, ms.bfloat16):
            return ops.flash_attention_score(q, k, v, self.heads, scalar_value=self.scale, input_layout="BSH")
        q, k, v = self._split(q), self._split(k), self._split(v)
        if mask is None:
            out = self.core(q, k, v, self.no_mask.astype(q.dtype))
        else:
            out = self.core_masked(q, k, v, mask.astype(q.dtype))
        return out.transpose(0, 2, 1, 3).reshape(b, sq, self.heads * self.head_dim)
