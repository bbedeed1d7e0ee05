"""Harness self-checks without models: a small numpy workload, or a worker killed as an OOM kill would be.

The workers skip loading the frameworks (the case says so), so a check takes seconds; the protocol, the
SIGSTOP/SIGCONT alternation, peak memory and failure reporting are the ones the real cases use.
"""
import os
import signal

import numpy as np


def prepare(folder, mode):
    np.save(os.path.join(folder, "matrix.npy"), np.random.default_rng(0).standard_normal((200, 200)))


def build(side, folder, mode):
    if mode == "crash" and side == "ours":
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    matrix = np.load(os.path.join(folder, "matrix.npy"))

    def step():
        product = matrix
        for _ in range(5):
            product = np.tanh(product @ matrix / 200.0)
        return float(product.sum())

    return step
