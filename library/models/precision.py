"""Mixed precision for the model Cells: low-precision compute in Linear/Conv/attention, fp32 norms/softmax.

Parameters stay fp32 (the optimizer updates fp32 masters); `to_float` makes a Cell cast its inputs and
parameters to the compute dtype. On the CPU fp16 gives no speed-up and bf16 has no kernels
(shared/MINDSPORE_CPU.md), so there the request is refused with a warning and the model stays fp32.
"""
import warnings

import mindspore as ms

from .. import device
from ..errors import UserError
from .attention import AttentionCore
from .layers import Conv2d, GroupNorm, LayerNorm, Linear

_DTYPES = {"fp32": ms.float32, "float32": ms.float32, "no": ms.float32,
           "fp16": ms.float16, "float16": ms.float16, "bf16": ms.bfloat16, "bfloat16": ms.bfloat16}
_LOW_PRECISION = (Linear, Conv2d, AttentionCore)
_FP32 = (GroupNorm, LayerNorm)


def parse_dtype(dtype):
    """'fp16' / 'bf16' / 'fp32' (also 'no', 'float16', ...) or a MindSpore dtype -> MindSpore dtype."""
    if dtype in (ms.float32, ms.float16, ms.bfloat16):
        return dtype
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise UserError(f"mixed precision: expected one of fp32, fp16, bf16 (or 'no'), got {dtype!r}")
    return _DTYPES[key]


def cast_compute(cell, dtype):
    """Mark every Linear/Conv2d/AttentionCore under `cell` to compute in `dtype`, norms in fp32.

    Call before the first call of the model: a graph already compiled keeps its dtypes."""
    for _, sub in cell.cells_and_names():
        if isinstance(sub, _LOW_PRECISION):
            sub.to_float(dtype)
        elif isinstance(sub, _FP32):
            sub.to_float(ms.float32)
    return cell


def apply_mixed_precision(cell, dtype):
    """Apply `dtype` compute to `cell` where the device profits; returns the dtype actually used."""
    dtype = parse_dtype(dtype)
    if dtype == ms.float32:
        return ms.float32
    if device.is_cpu():
        warnings.warn(f"mixed precision {dtype} is not used on the CPU (no speed-up for fp16, no bf16 kernels); "
                      "the model stays in fp32", stacklevel=2)
        return ms.float32
    cast_compute(cell, dtype)
    return dtype


def apply_mixed_precision_to_models(bundle, dtype):
    """`dtype` compute for the UNet and every text encoder (the VAE stays fp32: fp16 VAEs decode NaN/black
    images, kohya's --no_half_vae); returns the dtype actually used."""
    used = apply_mixed_precision(bundle.unet, dtype)
    for encoder in bundle.text_encoders:
        apply_mixed_precision(encoder, dtype)
    return used

