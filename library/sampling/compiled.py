"""Calling compiled GRAPH_MODE Cells at sampling speed, and the UNet call of one guided sampling step.

`run_graph(cell, *tensors)` returns what `cell(*tensors)` returns. MindSpore's `Cell.__call__` re-enters
`Cell.compile` on every call, and even when the graph is cached that walks every sub-cell to set its
compile phase: ~400 cells for the tiny SD1 UNet, ~800 for tiny SDXL, several milliseconds a call, which is
a large share of a small model's sampling step. The first call for an input signature (shapes, dtypes) and
the cell's MindSpore cache key (`create_time`, which LoRA apply/remove and new token rows change) goes
through `cell(...)` and compiles; later calls hand the inputs straight to the graph executor under the
phase that call compiled, as MindSpore's own inference path (`Cell._predict`) does.

Graphs read parameter values live (ops.assign, LoRA multipliers, merged weights). What a graph bakes in
(the adapters in each layer) is the caller's business: key the Cells on models.bundle.graph_structure_key.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

try:  # private MindSpore 2.x API; without it every call simply goes through Cell.__call__
    from mindspore.graph.api import _cell_graph_executor, _convert_python_data

    _EXECUTOR = _cell_graph_executor._graph_executor
except ImportError:  # pragma: no cover - other MindSpore versions
    _EXECUTOR = None

_PHASES_ATTR = "_sampling_compiled_phases"


def _fast_path_available(args):
    return (_EXECUTOR is not None and ms.get_context("mode") == ms.GRAPH_MODE
            and all(isinstance(a, Tensor) for a in args))


def run_graph(cell, *args):
    """`cell(*args)` for Tensor inputs, without the per-call cell-tree walk once this signature compiled."""
    if not _fast_path_available(args):
        return cell(*args)
    phases = cell.__dict__.get(_PHASES_ATTR)
    if phases is None:
        phases = {}
        object.__setattr__(cell, _PHASES_ATTR, phases)
    key = (cell.create_time, tuple((tuple(a.shape), a.dtype) for a in args))
    entry = phases.get(key)
    if entry is None:
        out = cell(*args)  # compiles (or finds) the graph for this signature
        mutable = list(cell._has_mutable_args_list) if cell._has_mutable_args_list else []
        phases[key] = (cell.phase_cache[cell.phase], mutable, list(cell.sequence_modified or []))
        return out
    phase, mutable, sequence_modified = entry
    inputs = _EXECUTOR.get_args_for_run(cell, args, {}, mutable, sequence_modified, False, False)
    return _convert_python_data(_EXECUTOR(tuple(inputs), phase))


class GuidedUNetStep(nn.Cell):
    """`construct(x (B,4,h,w), t (1,), context, scale (), text_embeds=None, time_ids=None) -> model output`.

    With guidance the UNet runs once on the batch [x; x] against the [uncond; cond] context and the halves
    are combined as uncond + scale * (cond - uncond) inside the graph; the scale is an input, so one graph
    serves every scale. Without guidance it is the plain UNet call on cond only.
    """

    def __init__(self, unet, guided):
        super().__init__()
        self.unet = unet
        self.guided = guided

    def construct(self, x, t, context, scale, text_embeds=None, time_ids=None):
        if not self.guided:
            return ops.cast(self.unet(x, t, context, text_embeds, time_ids), ms.float32)
        # a fp16/bf16 UNet (--fp16/--bf16): guidance and the samplers work in fp32
        out = ops.cast(self.unet(ops.concat((x, x), axis=0), t, context, text_embeds, time_ids), ms.float32)
        uncond, cond = ops.split(out, x.shape[0], axis=0)
        return uncond + scale * (cond - uncond)


class NegativeScaleUNetStep(nn.Cell):
    """kohya gen_img's `--negative_scale` / `--nl`: `construct(x, t, context, scale, negative_scale,
    text_embeds=None, time_ids=None)`.

    The UNet runs once on [x; x; x] against the [negative; cond; uncond] context, uncond being the empty
    prompt, and the parts combine as uncond + scale * (cond - uncond) - negative_scale * (negative - uncond):
    the negative prompt gets its own scale instead of standing in for the unconditional prediction. A graph
    of its own, so plain CFG (GuidedUNetStep) keeps its graph; both scales are inputs.
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def construct(self, x, t, context, scale, negative_scale, text_embeds=None, time_ids=None):
        out = ops.cast(self.unet(ops.concat((x, x, x), axis=0), t, context, text_embeds, time_ids), ms.float32)
        negative, cond, uncond = ops.split(out, x.shape[0], axis=0)
        return uncond + scale * (cond - uncond) - negative_scale * (negative - uncond)
