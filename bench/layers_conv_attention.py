"""Benchmark (not a test): our shared layers vs torch, forward+backward, at SD1 level-0 sizes.

    cd /work/main && python bench/layers_conv_attention.py [--size 32] [--reps 9] [--with-slow]

Cases: 3x3 conv (B2, C320 -> 320, stride 1 pad 1; grads to input, weight, bias), self-attention
(B2, S = size^2, 8 heads x 40, grads to q/k/v), GroupNorm (32 groups). Each case also runs the plain
MindSpore formulation (autodiff) where it differs; the native 3x3 conv only with --with-slow (it takes tens
of seconds per call on the CPU). Times are medians (and minima) of interleaved repetitions; ratios are ours / torch.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="latent side (32 or 64 for SD1 level 0)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--with-slow", action="store_true", help="also time the native MindSpore 3x3 conv")
    parser.add_argument("--cases", default="conv3x3,attention,groupnorm", help="comma-separated subset")
    args = parser.parse_args()

    from library import device
    device.setup()
    import mindspore as ms
    import torch
    from mindspore import Tensor, nn, ops
    from library.models.attention import AttentionCore, PlainAttention
    from library.models.layers import Conv2d, GroupNorm, group_norm_reference

    class Grads(nn.Cell):
        """Gradients of sum(net(*inputs) * g) w.r.t. all inputs and the net's trainable parameters."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            self.params = ms.ParameterTuple(net.trainable_params())
            self.grad = ops.GradOperation(get_all=True, get_by_list=bool(self.params))

        def _loss(self, *args):
            return (self.net(*args[:-1]) * args[-1]).sum()

        def construct(self, *args):
            if self.params:
                return self.grad(self._loss, self.params)(*args)
            return self.grad(self._loss)(*args)

    class NativeConv(nn.Cell):
        def __init__(self, conv):
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            self.conv = ops.Conv2D(conv.out_channels, 3, pad_mode="pad", pad=1)

        def construct(self, x):
            return self.conv(x, self.weight) + self.bias.reshape(1, -1, 1, 1)

    class PlainCore(nn.Cell):
        def __init__(self, heads, dim):
            super().__init__()
            self.core = AttentionCore(heads, dim)
            self.core.core = PlainAttention(self.core.scale)

        def construct(self, q, k, v):
            return self.core(q, k, v)

    class FormulaGroupNorm(nn.Cell):
        def __init__(self, gn):
            super().__init__()
            self.gn = gn

        def construct(self, x):
            return group_norm_reference(x, self.gn.num_groups, self.gn.weight, self.gn.bias, self.gn.eps)

    class NativeGroupNorm(nn.Cell):
        def __init__(self, gn):
            super().__init__()
            self.gn = gn

        def construct(self, x):
            return ops.group_norm(x, self.gn.num_groups, self.gn.weight, self.gn.bias, self.gn.eps)

    def ms_step(net, inputs, g):
        grad = Grads(net)
        tensors = [Tensor(a) for a in inputs] + [Tensor(g)]

        def step():
            out = grad(*tensors)
            flat = [t for part in out for t in (part if isinstance(part, tuple) else (part,))]
            return [t.asnumpy() for t in flat]
        return step

    def torch_step(fn, inputs, params, g):
        tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
        gt = torch.from_numpy(g)

        def step():
            for t in tensors + params:
                t.grad = None
            (fn(*tensors) * gt).sum().backward()
        return step

    rs = np.random.RandomState(0)
    b, c, s = 2, 320, args.size
    cases = {}

    conv = Conv2d(c, c, 3, padding=1)
    x = rs.randn(b, c, s, s).astype(np.float32)
    g = rs.randn(b, c, s, s).astype(np.float32)
    wt = torch.tensor(conv.weight.asnumpy(), requires_grad=True)
    bt = torch.tensor(conv.bias.asnumpy(), requires_grad=True)
    cases["conv3x3"] = {
        "torch": torch_step(lambda t: torch.nn.functional.conv2d(t, wt, bt, padding=1), [x], [wt, bt], g),
        "ours (im2col)": ms_step(conv, [x], g)}
    if args.with_slow:
        cases["conv3x3"]["plain MS (native)"] = ms_step(NativeConv(conv), [x], g)

    heads, dim = 8, 40
    tokens = s * s
    qkv = [rs.randn(b, tokens, heads * dim).astype(np.float32) for _ in range(3)]
    ga = rs.randn(b, tokens, heads * dim).astype(np.float32)

    def torch_attention(q, k, v):
        split = [t.reshape(b, tokens, heads, dim).transpose(1, 2) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*split)
        return out.transpose(1, 2).reshape(b, tokens, heads * dim)
    cases["attention"] = {"torch": torch_step(torch_attention, qkv, [], ga),
                          "ours (custom bwd)": ms_step(AttentionCore(heads, dim), qkv, ga),
                          "plain MS (autodiff)": ms_step(PlainCore(heads, dim), qkv, ga)}

    gn = GroupNorm(32, c)
    gw = torch.tensor(gn.weight.asnumpy(), requires_grad=True)
    gb = torch.tensor(gn.bias.asnumpy(), requires_grad=True)
    cases["groupnorm"] = {
        "torch": torch_step(lambda t: torch.nn.functional.group_norm(t, 32, gw, gb, 1e-5), [x], [gw, gb], g),
        "ours (LN fwd, GN bwd)": ms_step(gn, [x], g),
        "native group_norm": ms_step(NativeGroupNorm(gn), [x], g),
        "plain MS (formula)": ms_step(FormulaGroupNorm(gn), [x], g)}

    print(f"forward+backward, B{b} C{c} {s}x{s}; attention {heads}x{dim}, S={tokens}; "
          f"median of {args.reps} interleaved reps (first call = compile, not timed)")
    for name, steps in cases.items():
        if name not in args.cases.split(","):
            continue
        for step in steps.values():
            step()
        times = {label: [] for label in steps}
        for _ in range(args.reps):
            for label, step in steps.items():
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
        base, base_min = np.median(times["torch"]), np.min(times["torch"])
        for label, values in times.items():
            median, fastest = np.median(values), np.min(values)
            # the min is the least disturbed by other processes on a shared machine
            print(f"  {name:10s} {label:22s} median {median * 1e3:9.1f} ms  x{median / base:5.2f} | "
                  f"min {fastest * 1e3:9.1f} ms  x{fastest / base_min:5.2f}  vs torch")


if __name__ == "__main__":
    main()
