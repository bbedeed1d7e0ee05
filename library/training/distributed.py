"""Data parallel with MindSpore's own engine, launched by `msrun` (CPU, GPU and Ascend).

msrun starts one process per worker and sets MS_WORKER_NUM / MS_ROLE; each process then joins the group,
takes its slice of every global batch, and the compiled step averages gradients across workers.
"""
import os
from dataclasses import dataclass


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    def gather_rows(self, array):
        """Every worker's `array` (same shape on each) concatenated along axis 0 in rank order."""
        if self.size <= 1:
            return array
        from .collectives import all_gather_rows

        return all_gather_rows(array)


def launched_by_msrun():
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and int(os.environ.get("MS_WORKER_NUM", "1")) > 1


def init_world(device_target):
    if not launched_by_msrun():
        return World()
    import mindspore as ms
    from mindspore.communication import init, get_rank, get_group_size

    init()
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        # msrun also runs the script as the cluster's scheduler: init() served the workers; it trains nothing
        raise SystemExit(0)
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    if device_target == "CPU" and hasattr(os, "sched_setaffinity"):
        # One core per worker: unpinned workers on few cores fight over the same cores (measured slower).
        cores = sorted(os.sched_getaffinity(0))
        per = max(1, len(cores) // size)
        os.sched_setaffinity(0, set(cores[rank * per:(rank + 1) * per]) or set(cores))
    return World(rank, size)
