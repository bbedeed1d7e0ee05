"""The thread policy: both frameworks get the same number of compute threads (by default every core we may use).

MindSpore: `device_context.cpu.op_tuning.threads_num(n)` (its CPU kernels' pool, oneDNN included); torch:
`set_num_threads(n)`. Both also see OMP/MKL/OpenBLAS caps of n in the environment (set by the parent before
the worker starts). Only one worker computes at a time (the other is stopped), so each has all n cores.
"""
import os


def default_threads():
    """The cores this process may run on (the affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def describe(threads):
    return {"threads": threads,
            "policy": f"both frameworks use {threads} compute threads (MindSpore op_tuning.threads_num, torch "
                      f"set_num_threads, OMP/MKL caps); one worker computes at a time, the other is SIGSTOPped"}


def apply_thread_policy(side, threads):
    """Called in a worker before its case builds anything."""
    if side == "ours":
        import mindspore as ms

        from library import device

        device.setup()  # the trainers' set-up: CPU, GRAPH_MODE, synchronous dispatch
        ms.device_context.cpu.op_tuning.threads_num(threads)
    else:
        import torch

        torch.set_num_threads(threads)
