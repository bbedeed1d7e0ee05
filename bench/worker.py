"""One framework per process: the worker that runs a case's step, and the parent's handle on it.

Each side of a case (ours = MindSpore, ref = torch) runs in its own process, so its peak resident memory is its
own and one framework's thread pools cannot share a process with the other's. The parent talks to a worker
over a line protocol on the worker's original stdout; everything else the worker (or a C++ library) prints
goes to stderr, which the parent saves to a log file and quotes when the worker fails.

    parent -> worker (stdin):  "run" | "quit"
    worker -> parent:          "ready {json}" | "result {json}" | "peak {json}" | "error {json}"

Between its timed calls a worker is stopped with SIGSTOP: an idle MindSpore process keeps runtime threads
spinning, which made a torch process sharing the 2 cores up to 30x slower.
"""
import argparse
import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("ours", "ref", "prepare")


class WorkerFailed(Exception):
    """A worker died, reported an error or did not answer in time; the message says which and why."""


# ---------------------------------------------------------------------------------------------- worker side

def peak_rss_mb():
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is missing), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss():
    """Start a new peak (Linux >= 4.0), so the step's peak does not include loading the weights."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def serve(case_name, side, folder, threads, params=None, commands=sys.stdin):
    """Build the case's step for `side`, then answer commands until "quit" (or end of input)."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library and C++ prints must not mix with the protocol

    def say(kind, **payload):
        channel.write(f"{kind} {json.dumps(payload)}\n")
        channel.flush()

    try:
        from bench.cases import get_case
        from bench.threads import apply_thread_policy

        case = get_case(case_name).with_params(params)
        if case.frameworks:
            apply_thread_policy(side, threads)
        start = time.perf_counter()
        if side == "prepare":
            case.prepare(folder)
            say("ready", build_s=time.perf_counter() - start)
            return 0
        step = case.build(side, folder)
        build_s, build_peak_mb = time.perf_counter() - start, peak_rss_mb()
        gc.collect()  # the loaded weight files are garbage now
        peak_reset = reset_peak_rss()
        say("ready", build_s=build_s)
        for line in commands:
            if line.strip() == "quit":
                break
            start = time.perf_counter()
            value = step()  # returns a float computed from the result, so the work has finished
            say("result", seconds=time.perf_counter() - start, value=float(value))
        say("peak", peak_mb=peak_rss_mb(), build_peak_mb=build_peak_mb, peak_reset=peak_reset)
        return 0
    except BaseException as e:  # noqa: BLE001 - any failure is reported to the parent, then the worker exits
        traceback.print_exc()
        first_line = next((line for line in str(e).splitlines() if line.strip()), "")
        say("error", message=f"{type(e).__name__}: {first_line}".strip()[:500])
        return 1


def main():
    parser = argparse.ArgumentParser(description="benchmark worker (started by python -m bench)")
    parser.add_argument("--case", required=True)
    parser.add_argument("--side", required=True, choices=SIDES)
    parser.add_argument("--folder", required=True, help="where the prepare side writes the shared weights")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--params", default="{}", help="JSON: case parameters to override")
    args = parser.parse_args()
    sys.exit(serve(args.case, args.side, args.folder, args.threads, json.loads(args.params)))


# ---------------------------------------------------------------------------------------------- parent side

class Worker:
    """A running worker process: start it, time calls, read its peak memory, stop it."""

    def __init__(self, case_name, side, folder, threads, log_path, timeout_s=1800.0, params=None):
        self.side = side
        self.log_path = log_path
        self.timeout_s = timeout_s
        self._buffer = b""
        env = dict(os.environ, GLOG_v="3", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
            "PYTHONPATH")])), **thread_env(threads))
        cmd = [sys.executable, "-m", "bench.worker", "--case", case_name, "--side", side, "--folder", folder,
               "--threads", str(threads), "--params", json.dumps(params or {})]
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=ROOT, env=env, bufsize=0)
        self.build_s = self._expect("ready")["build_s"]

    # -- protocol
    def _read_line(self, deadline):
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerFailed(f"{self.side}: no answer within {self.timeout_s:.0f} s (killed)")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 5.0))
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def _expect(self, kind):
        deadline = time.monotonic() + self.timeout_s
        while True:
            line = self._read_line(deadline)
            if line is None:
                raise WorkerFailed(f"{self.side}: {self._death_reason()}")
            word, _, payload = line.partition(" ")
            if word == "error":
                self._reap()
                raise WorkerFailed(f"{self.side}: {json.loads(payload)['message']}")
            if word == kind:
                return json.loads(payload)

    def _send(self, command):
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerFailed(f"{self.side}: {self._death_reason()}") from None

    # -- commands
    def run(self):
        """One timed call: (seconds, check value)."""
        self.resume()
        self._send("run")
        answer = self._expect("result")
        self.pause()
        return answer["seconds"], answer["value"]

    def finish(self):
        """{"peak_mb": during the calls, "build_peak_mb": while building, "peak_reset": bool}; the worker exits."""
        self.resume()
        self._send("quit")
        peak = self._expect("peak")
        self._reap()
        return peak

    def wait_done(self):
        """For the prepare side, which exits after "ready"."""
        self._reap()

    def pause(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self._reap()

    def _reap(self):
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._log.close()

    def _death_reason(self):
        code = self.proc.wait()
        self._reap()
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            reason = f"killed by {name}{hint}"
        else:
            reason = f"exited with code {code}"
        tail = last_lines(self.log_path, 2)
        return f"{reason}; log {self.log_path}: {tail}" if tail else reason


def thread_env(threads):
    """Thread caps that must be in the environment before a framework loads its thread pools."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def last_lines(path, count):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-count:])


if __name__ == "__main__":
    main()
