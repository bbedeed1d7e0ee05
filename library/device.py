"""MindSpore context set-up, chosen by the device that is present (never by test-only flags)."""
import os

_state = {"target": None}


def setup(device=None, mode="graph"):
    """Configure MindSpore once: device target (auto: Ascend > GPU > CPU), graph or PyNative mode.

    On the CPU, dispatch is made synchronous: with the asynchronous pipeline on few cores, threads spin and
    every op waits for a scheduler tick (see shared/MINDSPORE_CPU.md).
    """
    import mindspore as ms

    target = device or os.environ.get("SDMS_DEVICE") or _detect_target(ms)
    ms.set_device(target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if target == "CPU":
        ms.runtime.launch_blocking()
    _state["target"] = target
    return target


def _detect_target(ms):
    # MindSpore's default target is the best backend whose plugin loads (Ascend > GPU > CPU); asking it
    # avoids probing each backend, which logs a warning per missing one.
    return ms.get_context("device_target")


def target():
    if _state["target"] is None:
        import mindspore as ms

        _state["target"] = ms.get_context("device_target")
    return _state["target"]


def is_cpu():
    return target() == "CPU"


def is_ascend():
    return target() == "Ascend"
