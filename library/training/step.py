"""The compiled train step: forward, backward, gradient accumulation, clipping, loss scaling, update.

One Cell per mode so each compiles to one graph (GRAPH_MODE on every device; PyNative only for debugging):
- "fused": loss + grads + update in one call (no accumulation),
- "accumulate": loss + grads added into buffers (the first n-1 micro-batches),
- "apply": the last micro-batch: grads + buffers, mean, all-reduce, clip, update, buffers zeroed.
An update whose gradient norm is not finite is skipped, so a NaN loss never corrupts the trained weights;
the loop sees the NaN loss and stops with a message.
With a flat optimizer (`optimizer.flat`, FusedAdamW) the gradients are concatenated once into one vector and
everything after the backward (accumulation, unscaling, all-reduce, norm, clipping, the skip, the update) is
a fixed handful of ops instead of several per parameter, and the skip is a select, not a branch.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor, Parameter, ParameterTuple


class TrainStep(nn.Cell):
    def __init__(self, loss_cell, optimizer, mode="fused", max_grad_norm=1.0, accumulation_steps=1,
                 accum_buffers=None, grad_reducer=None, loss_scale=None):
        super().__init__(auto_prefix=False)
        assert mode in ("fused", "accumulate", "apply")
        self.loss_cell = loss_cell
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.flat = bool(getattr(optimizer, "flat", False))
        self.mode = mode
        self.max_grad_norm = float(max_grad_norm or 0.0)
        self.accumulation_steps = int(accumulation_steps)
        self.accum = accum_buffers
        self.grad_reducer = grad_reducer
        self.use_loss_scale = loss_scale is not None
        self.loss_scale = loss_scale if loss_scale is not None else Parameter(Tensor(1.0, ms.float32),
                                                                              name="loss_scale",
                                                                              requires_grad=False)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss = self.loss_cell(*inputs)
        sens = ops.cast(self.loss_scale, loss.dtype)
        grads = self.grad(self.loss_cell, self.weights)(*inputs, sens)
        if self.flat:
            grads = (self.optimizer.flatten(grads),)
        if self.mode == "accumulate":
            self.hyper_map(ops.assign_add, self.accum, grads)
            return loss, ops.zeros((), ms.float32)
        if self.mode == "apply":
            grads = self.hyper_map(ops.add, grads, self.accum)
            self.hyper_map(_zero, self.accum)
        if self.use_loss_scale or self.accumulation_steps > 1:
            scale = self.loss_scale * self.accumulation_steps
            grads = self.hyper_map(ops.partial(_divide, scale), grads)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        norm = _global_norm(grads)
        finite = ops.isfinite(norm)
        if self.max_grad_norm > 0:
            # torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6), never up
            factor = ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
            grads = self.hyper_map(ops.partial(_multiply, factor), grads)
        if self.flat:
            self.optimizer.apply_flat(grads[0], finite)
            return loss, norm
        if finite:
            self.optimizer(grads)
        return loss, norm


_zero = ops.MultitypeFuncGraph("zero")
_divide = ops.MultitypeFuncGraph("divide")


_multiply = ops.MultitypeFuncGraph("multiply")


@_multiply.register("Tensor", "Tensor")
def _multiply_grad(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


@_zero.register("Tensor")
def _zero_buffer(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))


@_divide.register("Tensor", "Tensor")
def _divide_grad(scale, grad):
    return grad / ops.cast(scale, grad.dtype)


def _global_norm(grads):
    squares = [ops.reduce_sum(ops.square(ops.cast(g, ms.float32))) for g in grads]
    return ops.sqrt(ops.addn(squares))


def make_accumulation_buffers(optimizer):
    if getattr(optimizer, "flat", False):
        total = sum(int(np.prod(p.shape)) for p in optimizer.parameters)
        return ParameterTuple([Parameter(Tensor(np.zeros(total, np.float32)), name="accum.flat",
                                         requires_grad=False)])
    return ParameterTuple([Parameter(ops.zeros(p.shape, p.dtype), name=f"accum.{p.name}", requires_grad=False)
                           for p in optimizer.parameters])


def make_grad_reducer(optimizer, world_size):
    """Average gradients across data-parallel workers (mean), inside the compiled step."""
    if world_size <= 1:
        return None
    # a flat optimizer's step reduces one vector; the reducer only needs a parameter of that shape per gradient
    params = [optimizer.exp_avg] if getattr(optimizer, "flat", False) else optimizer.parameters
    return nn.DistributedGradReducer(params, mean=True, degree=world_size)


class StepRunner:
    """Picks the accumulate/apply/fused cell for each micro-batch and returns (loss, grad_norm, updated).

    loss_scale: None, or a loss_scale.DynamicLossScale (fp16): the compiled steps read its Parameter and it is
    updated from the gradient norm after each optimizer step (halved on overflow, the update skipped).
    """

    def __init__(self, loss_cell, optimizer, max_grad_norm, accumulation_steps, world_size=1, loss_scale=None):
        self.loss_scaler = loss_scale
        scale_parameter = None if loss_scale is None else loss_scale.parameter
        reducer = make_grad_reducer(optimizer, world_size)
        self.accumulation_steps = max(1, int(accumulation_steps))
        if self.accumulation_steps == 1:
            self.fused = TrainStep(loss_cell, optimizer, "fused", max_grad_norm, 1, None, reducer,
                                   scale_parameter)
        else:
            buffers = make_accumulation_buffers(optimizer)
            self.accumulate = TrainStep(loss_cell, optimizer, "accumulate", max_grad_norm,
                                        self.accumulation_steps, buffers, None, scale_parameter)
            self.apply = TrainStep(loss_cell, optimizer, "apply", max_grad_norm, self.accumulation_steps,
                                   buffers, reducer, scale_parameter)
            self.buffers = buffers
        for cell in self.cells():
            cell.set_train(True)

    def cells(self):
        return [self.fused] if self.accumulation_steps == 1 else [self.accumulate, self.apply]

    def run(self, micro_index, inputs):
        """micro_index: 0..accumulation_steps-1 within the current optimizer step."""
        if self.accumulation_steps == 1:
            loss, norm = self.fused(*inputs)
        elif micro_index < self.accumulation_steps - 1:
            loss, _ = self.accumulate(*inputs)
            return float(loss.asnumpy()), None, False
        else:
            loss, norm = self.apply(*inputs)
        norm = float(norm.asnumpy())
        if self.loss_scaler is not None:
            self.loss_scaler.update(norm)
        return float(loss.asnumpy()), norm, True
