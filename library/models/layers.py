"""Shared layers with diffusers/torch parameter names and layouts.

Every model builds on these (never nn.Dense / nn.Conv2d directly) so that device-specific formulations are
chosen in one place. `Linear` and `Conv2d` carry an `adapters` CellList (LoRA appends there); the base
parameter names never change.

On the CPU, k>1 convolutions run as im2col + MatMul with a custom backward (MindSpore's native CPU conv
falls back to oneDNN's reference kernel, ~100x slower; see shared/MINDSPORE_CPU.md). Everywhere else, and for
1x1 convs, the native conv is used (on the CPU a 1x1 conv was faster natively than as per-sample MatMuls:
fwd+bwd 57 vs 75 ms at (2,320,32,32)). GroupNorm on the CPU: see `LayerNormGroupNorm`.
"""
import contextlib
import math
import warnings

import mindspore as ms
from mindspore import nn, ops, Parameter
from mindspore.common.initializer import initializer, Normal, One, Uniform, Zero
from mindspore.ops.auto_generate import gen_ops_prim as _gen_prims
from mindspore.ops.operations import _grad_ops

from .. import device


def _uniform(shape, bound):
    """torch's default Linear/Conv init (kaiming_uniform a=sqrt(5) == U(-1/sqrt(fan_in), +)), created lazily."""
    return initializer(Uniform(bound), shape, ms.float32)


@contextlib.contextmanager
def lazy_parameters():
    """Build Cells without allocating their initial weights (a full SDXL UNet lists its modules in ms).

    Parameters made inside stay uninitialised until `set_data` (a checkpoint load) or the first graph
    compile / `init_parameters_data()`, which fills the rest with their initializers.
    """
    from mindspore.nn.utils import no_init_parameters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with no_init_parameters():
            yield


def maybe_recompute(cell, enabled):
    """Gradient checkpointing for one block: its activations are recomputed in the backward pass."""
    if enabled:
        cell.recompute()
    return cell


# Broadcasting element-wise ops (Add/Sub/Mul of tensors of different shapes) are memory traps on the CPU: each
# such kernel keeps per-element index tables (~16 bytes per output element, measured: 8 Subs of 4M elements
# left +529 MB RSS, the same Subs on equal shapes +33 MB) for the life of the compiled graph. Hence BiasAdd for
# per-channel biases and explicit `broadcast_to` (a plain copy, freed after use) elsewhere.
_bias_add = ops.BiasAdd()


def add_channel_bias(x, bias):
    """x (B, C, ...) + bias broadcast over the rest; `bias` is (C,) or per-sample (B, C)."""
    if bias.ndim == 1:
        return _bias_add(x, bias)
    if bias.shape[0] == 1:
        return _bias_add(x, bias.reshape(-1))
    shape = bias.shape + (1,) * (x.ndim - 2)
    return x + ops.broadcast_to(bias.reshape(shape), x.shape)


class Linear(nn.Cell):
    """y = x W^T + b with W [out, in] (torch layout), over the last axis of any-rank input."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound), name="weight")
        self.bias = Parameter(_uniform((out_features,), bound), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.adapters = nn.CellList()

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = _bias_add(y, self.bias)
        y = y.reshape(shape[:-1] + (self.out_features,))
        for adapter in self.adapters:
            y = y + adapter(x)
        return y


# Above this many column elements (256 MB of fp32; e.g. a VAE at 1024 px: 9 x 128 x 1024^2 per sample) the
# forward is done per sample in bands of output rows, so im2col never needs more memory than this.
IM2COL_MAX_ELEMENTS = 1 << 26


class Im2colConv2d(nn.Cell):
    """conv2d(x, weight) (no bias) as unfold + one 2-D MatMul per sample, with a custom backward.

    A broadcast batched matmul would copy W per sample and indexing `cols[b]` becomes a slow StridedSlice in
    graph mode, hence `unstack`. The backward gives dx = fold(W^T dy) and dW from the native
    Conv2DBackpropFilter kernel (fast on CPU); when the weight is frozen the graph drops the unused dW.
    The weight comes in as an input because a bprop cannot reference Parameters. Large inputs (VAE
    encode/decode) run the forward in row bands; the backward is not banded (training sizes are latents).
    """

    def __init__(self, kernel_size, stride=1, padding=0, max_elements=IM2COL_MAX_ELEMENTS):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.max_elements = max_elements
        self.matmul = ops.MatMul()
        self.matmul_ta = ops.MatMul(transpose_a=True)
        self.weight_grad = _grad_ops.Conv2DBackpropFilter(
            1, (kernel_size, kernel_size), pad_mode="pad", pad=padding, pad_list=(padding,) * 4,
            stride=(stride, stride))

    def _out_size(self, size):
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def construct(self, x, weight):
        b, c, h, w = x.shape
        cout = weight.shape[0]
        ho, wo = self._out_size(h), self._out_size(w)
        w2d = weight.reshape(cout, -1)
        if b * c * self.kernel_size * self.kernel_size * ho * wo > self.max_elements:
            return self._banded(x, w2d, ho, wo)
        cols = ops.unfold(x, self.kernel_size, 1, self.padding, self.stride)
        outs = [self.matmul(w2d, sample_cols) for sample_cols in ops.unstack(cols, 0)]
        return ops.stack(outs, 0).reshape(b, cout, ho, wo)

    def _banded(self, x, w2d, ho, wo):
        k, s = self.kernel_size, self.stride
        col_rows = w2d.shape[1]
        rows = max(1, self.max_elements // (col_rows * wo))
        if self.padding:
            p = self.padding
            x = ops.pad(x, (p, p, p, p))
        samples = []
        for sample in ops.unstack(x, 0):
            sample = sample.expand_dims(0)
            bands = []
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                cols = ops.unfold(sample[:, :, r0 * s:(r1 - 1) * s + k, :], k, 1, 0, s)
                bands.append(self.matmul(w2d, cols.reshape(col_rows, -1)))
            samples.append(ops.concat(bands, 1))
        return ops.stack(samples, 0).reshape(x.shape[0], w2d.shape[0], ho, wo)

    def bprop(self, x, weight, out, dout):
        b, _, h, w = x.shape
        cout = weight.shape[0]
        w2d = weight.reshape(cout, -1)
        dy = dout.reshape(b, cout, -1)
        dcols = ops.stack([self.matmul_ta(w2d, sample_dy) for sample_dy in ops.unstack(dy, 0)], 0)
        dx = ops.fold(dcols, ms.Tensor((h, w), ms.int32), self.kernel_size, 1, self.padding, self.stride)
        dw = self.weight_grad(dout, x, weight.shape)
        return dx, dw


class Conv2d(nn.Cell):
    """2-D convolution, NCHW, weight [out, in, kh, kw] (torch layout)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        fan_in = in_channels * kernel_size * kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform((out_channels, in_channels, kernel_size, kernel_size), bound), name="weight")
        self.bias = Parameter(_uniform((out_channels,), bound), name="bias") if bias else None
        self.use_im2col = kernel_size > 1 and device.is_cpu()
        if self.use_im2col:
            self.conv = Im2colConv2d(kernel_size, stride, padding)
        else:
            self.conv = ops.Conv2D(out_channels, kernel_size, pad_mode="pad" if padding else "valid",
                                   pad=padding, stride=stride)
        self.adapters = nn.CellList()

    def construct(self, x):
        y = self.conv(x, self.weight)
        if self.bias is not None:
            y = _bias_add(y, self.bias)
        for adapter in self.adapters:
            y = y + adapter(x)
        return y


class LayerNormGroupNorm(nn.Cell):
    """CPU GroupNorm: forward through the LayerNorm kernel on (B*groups, N) rows, backward through the native
    GroupNormGrad kernel. On the 2-core CPU, vs the native group_norm (median of 15 interleaved runs):
    forward 5.2 vs 7.2 ms at (2,320,32,32), 59 vs 81 ms at (1,128,256,256); forward+backward 11.3 vs 13.2
    and 134 vs 155 ms. LayerNorm's own backward is slower than GroupNormGrad, hence the mix; mean/rstd are
    extra outputs so the backward gets them without a recompute. Outputs: (y, mean, rstd); callers use y.
    """

    def __init__(self, num_groups, eps):
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.layer_norm = ops.LayerNorm(begin_norm_axis=2, begin_params_axis=1, epsilon=eps)
        self.group_norm_grad = _gen_prims.GroupNormGrad()

    def construct(self, x, weight, bias):
        b, c, g = x.shape[0], x.shape[1], self.num_groups
        rows = x.reshape(b, g, -1)
        spatial = rows.shape[2] * g // c
        # the per-channel affine rides in the LayerNorm kernel as (groups, channels/group * spatial) gamma/beta
        # maps: one pass, and no broadcasting Mul/Add (see _bias_add above)
        gamma = ops.broadcast_to(weight.reshape(c, 1), (c, spatial)).reshape(g, -1)
        beta = ops.broadcast_to(bias.reshape(c, 1), (c, spatial)).reshape(g, -1)
        y, mean, var = self.layer_norm(rows, gamma, beta)
        rstd = ops.rsqrt(var + self.eps)  # the LayerNorm kernel returns the variance
        return y.reshape(x.shape), mean.reshape(b, g), rstd.reshape(b, g)

    def bprop(self, x, weight, bias, out, dout):
        _, mean, rstd = out
        dx, dweight, dbias = self.group_norm_grad(dout[0], x, mean, rstd, weight, self.num_groups,
                                                  True, True, True)
        return dx, dweight, dbias


class GroupNorm(nn.Cell):
    """torch GroupNorm over (B, C, ...) with per-channel affine `weight`/`bias`.

    CPU: `LayerNormGroupNorm` (faster forward, native backward); elsewhere the native group_norm kernel.
    Both were measured against a mean/var formula left to autodiff (2-2.5x slower, see
    bench/layers_conv_attention.py) and a custom backward with MatMul reductions (no faster than native).
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.weight = Parameter(initializer(One(), (num_channels,), ms.float32), name="weight")
        self.bias = Parameter(initializer(Zero(), (num_channels,), ms.float32), name="bias")
        self.fast = LayerNormGroupNorm(num_groups, eps) if device.is_cpu() else None

    def construct(self, x):
        if self.fast is not None:
            return self.fast(x, self.weight, self.bias)[0]
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm_reference(x, num_groups, weight, bias, eps):
    """The same normalisation written out with mean/var (tests compare the kernel against it)."""
    b, c = x.shape[0], x.shape[1]
    h = x.reshape(b, num_groups, -1)
    mean = h.mean(axis=-1, keep_dims=True)
    var = ((h - mean) ** 2).mean(axis=-1, keep_dims=True)
    h = ((h - mean) / ops.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (len(x.shape) - 2)
    return h * weight.reshape(shape) + bias.reshape(shape)


class LayerNorm(nn.Cell):
    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.weight = Parameter(initializer(One(), normalized_shape, ms.float32), name="weight")
        self.bias = Parameter(initializer(Zero(), normalized_shape, ms.float32), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.norm(x, self.weight, self.bias)
        return y


class Embedding(nn.Cell):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = Parameter(initializer(Normal(0.02), (num_embeddings, embedding_dim), ms.float32),
                                name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)
