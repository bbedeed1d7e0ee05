"""Collectives the data loop needs outside the train step (data parallel only): a small compiled AllGather,
since graph-mode collectives work on every device, the CPU (mccl) included."""
import numpy as np
from mindspore import Tensor, nn, ops


class AllGatherRows(nn.Cell):
    def __init__(self):
        super().__init__()
        self.gather = ops.AllGather()

    def construct(self, x):
        return self.gather(x)


_cell = None


def all_gather_rows(array):
    """(B, ...) on each worker -> (workers * B, ...) in rank order, float32 on the wire."""
    global _cell
    if _cell is None:
        _cell = AllGatherRows()
    gathered = _cell(Tensor(np.ascontiguousarray(array, dtype=np.float32)))
    return gathered.asnumpy().astype(np.asarray(array).dtype)
