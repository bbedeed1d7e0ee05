"""Running one case: prepare the shared weights, start the two workers, time interleaved calls, take medians.

Small cases keep both workers alive and alternate single calls (ours, ref, then ref, ours, ...), so a load
change on the shared machine hits both sides; the idle worker is stopped meanwhile. Full-size cases run under
the shared memory lock (`/tmp/bigmem.lock`, the lock `flock` takes) with one framework resident at a time:
the ref worker does all its calls and exits, then ours does. The first call of each side (our graph compile,
torch's warm-up) is reported apart and not part of the median. A failing side marks the case failed with
the reason; what the other side measured is kept.
"""
import contextlib
import fcntl
import os
import shutil
import statistics
import tempfile
import time

from .cases import get_case
from .worker import Worker, WorkerFailed

BIGMEM_LOCK = "/tmp/bigmem.lock"


@contextlib.contextmanager
def bigmem_lock(path=BIGMEM_LOCK, say=print):
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"  waiting for {path} (another big-memory process is running)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SideTimes:
    """What one side measured."""

    def __init__(self, side):
        self.side = side
        self.worker = None
        self.build_s = None
        self.first_s = None
        self.first_value = None
        self.times = []
        self.peak = {}
        self.error = None
        self.skipped = False

    def start(self, case, folder, threads, log_dir, timeout_s):
        self.worker = Worker(case.name, self.side, folder, threads, os.path.join(log_dir, f"{self.side}.log"),
                             timeout_s, case.params)
        self.build_s = self.worker.build_s
        self.worker.pause()

    def call(self):
        seconds, value = self.worker.run()
        if self.first_s is None:
            self.first_s, self.first_value = seconds, value
        else:
            self.times.append(seconds)

    def finish(self):
        self.peak = self.worker.finish()

    def fail(self, error):
        self.error = str(error)
        if self.worker is not None:
            self.worker.kill()


def run_case(name, repeats, threads, timeout_s=1800.0, say=print, keep_logs=False, overrides=None,
             only=("ours", "ref")):
    """The case's result dict (see bench/README.md); never raises for a failing worker. `only`: the sides to
    run (the extras measure ours alone)."""
    case = get_case(name).with_params(overrides)
    log_dir = tempfile.mkdtemp(prefix=f"bench_{name}_logs_")
    folder = tempfile.mkdtemp(prefix=f"bench_{name}_")
    sides = {"ours": SideTimes("ours"), "ref": SideTimes("ref")}
    for key, side in sides.items():
        side.skipped = key not in only
    started = time.time()
    try:
        with (bigmem_lock(say=say) if case.big else contextlib.nullcontext()):
            prepare_error = _prepare(case, folder, threads, log_dir, timeout_s)
            if prepare_error:
                pass
            elif case.big:
                for side in (s for s in (sides["ref"], sides["ours"]) if not s.skipped):
                    _run_alone(side, case, folder, threads, log_dir, timeout_s, repeats)
            else:
                _run_interleaved(sides, case, folder, threads, log_dir, timeout_s, repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for side in sides.values():
            if side.worker is not None and side.worker.proc.poll() is None:
                side.worker.kill()
    result = summarise(case, sides, repeats, threads, "sequential" if case.big else "interleaved", prepare_error)
    result["wall_s"] = round(time.time() - started, 1)
    if result["status"] == "ok" and not keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        result["logs"] = log_dir
    return result


def _prepare(case, folder, threads, log_dir, timeout_s):
    try:
        Worker(case.name, "prepare", folder, threads, os.path.join(log_dir, "prepare.log"), timeout_s,
               case.params).wait_done()
        return None
    except WorkerFailed as e:
        return f"preparing the weights failed: {e}"


def _run_alone(side, case, folder, threads, log_dir, timeout_s, repeats):
    try:
        side.start(case, folder, threads, log_dir, timeout_s)
        for _ in range(repeats + 1):
            side.call()
        side.finish()
    except WorkerFailed as e:
        side.fail(e)


def _run_interleaved(sides, case, folder, threads, log_dir, timeout_s, repeats):
    order = [s for s in (sides["ours"], sides["ref"]) if not s.skipped]
    for side in order:
        try:
            side.start(case, folder, threads, log_dir, timeout_s)
        except WorkerFailed as e:
            side.fail(e)
    for rep in range(repeats + 1):  # call 0 is each side's first (compile / warm-up) call
        for side in (order if rep % 2 == 0 else order[::-1]):
            if side.error is None:
                try:
                    side.call()
                except WorkerFailed as e:
                    side.fail(e)
    for side in order:
        if side.error is None:
            try:
                side.finish()
            except WorkerFailed as e:
                side.fail(e)


def summarise(case, sides, repeats, threads, mode, prepare_error=None):
    ours, ref = sides["ours"], sides["ref"]
    result = {"what": case.what, "params": case.params, "mode": mode, "repeats": repeats, "threads": threads,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for side in (ours, ref):
        key = side.side
        result[f"{key}_s"] = statistics.median(side.times) if side.times else None
        result[f"{key}_min_s"] = min(side.times) if side.times else None
        result[f"{key}_first_s"] = side.first_s
        result[f"{key}_build_s"] = side.build_s
        result[f"{key}_peak_mb"] = side.peak.get("peak_mb")
        result[f"{key}_build_peak_mb"] = side.peak.get("build_peak_mb")
        result[f"{key}_value"] = side.first_value
    result["ratio"] = (result["ours_s"] / result["ref_s"]) if result["ours_s"] and result["ref_s"] else None
    if ours.first_value is not None and ref.first_value is not None:
        # both sides' first-call loss (or image mean): a large difference means they did not do the same work
        result["value_rel_diff"] = abs(ours.first_value - ref.first_value) / max(abs(ref.first_value), 1e-12)
    errors = [prepare_error] if prepare_error else []
    errors += [s.error if s.error.startswith(s.side + ":") else f"{s.side}: {s.error}" for s in (ours, ref)
               if s.error]
    result["status"] = "failed" if errors else "ok"
    if errors:
        result["error"] = "; ".join(errors)
    return result
