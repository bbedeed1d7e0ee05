"""Not a test module: the subprocess runner of the reliability tests (it holds no tests).

    python tests/test_reliability_runner.py train_network|train_textual_inversion <trainer options>

runs a trainer exactly as its command line does (`run_cli`), with one fault hook chosen by environment
variables, so that an interrupt or a kill lands at a known point instead of a lucky moment:

- RELIABILITY_PAUSE_AT_STEP=K: after step K is logged, create RELIABILITY_MARKER and wait (at most 120 s) until
  the process has received a SIGINT, which the test sends from outside; then training goes on.
- RELIABILITY_STALL_WRITE=TEXT: the first write into a hidden temp file whose name contains TEXT writes half its
  bytes, creates RELIABILITY_MARKER and sleeps, so the test can SIGKILL the process in the middle of a save.
"""
import builtins
import importlib
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touch(path):
    with open(path, "w", encoding="utf-8"):
        pass


def pause_for_interrupt_at(step_to_pause, marker):
    from library.training import loop, progress

    received = []
    on_interrupt = loop.TrainingLoop._on_interrupt

    def recording_on_interrupt(self, signum, frame):
        received.append(signum)
        return on_interrupt(self, signum, frame)

    update = progress.TrainingProgress.update

    def pausing_update(self, step, *args, **kwargs):
        result = update(self, step, *args, **kwargs)
        if step == step_to_pause:
            _touch(marker)
            deadline = time.monotonic() + 120
            while not received and time.monotonic() < deadline:
                time.sleep(0.02)
        return result

    loop.TrainingLoop._on_interrupt = recording_on_interrupt
    progress.TrainingProgress.update = pausing_update


class _StallingFile:
    """Writes half of the first chunk, then announces itself and hangs until killed."""

    def __init__(self, real, marker):
        self.real, self.marker = real, marker

    def write(self, data):
        self.real.write(data[:len(data) // 2])
        self.real.flush()
        os.fsync(self.real.fileno())
        _touch(self.marker)
        time.sleep(600)
        raise AssertionError("the test should have killed this process")

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def stall_write(text, marker):
    real_open = builtins.open

    def stalling_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if "w" in mode and name.startswith(".") and text in name:
            return _StallingFile(handle, marker)
        return handle

    builtins.open = stalling_open


# ---- used by the test modules --------------------------------------------------------------------------------

def start(trainer, argv, **hooks):
    """Start the runner in a subprocess; hooks: RELIABILITY_* environment variables (values as str)."""
    import subprocess

    env = dict(os.environ, GLOG_v="3", PYTHONPATH=REPO, **{k: str(v) for k, v in hooks.items()})
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), trainer, *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_marker(process, marker, timeout=400):
    """Block until the runner reaches its hook; fail with its output if it ends or hangs first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"runner never reached its hook (rc {process.returncode}):\n{out}\n{err}")
        time.sleep(0.05)


def logged_losses(logging_dir):
    """{step: loss} from the CSV log of the one run under logging_dir."""
    import csv
    import glob

    files = glob.glob(os.path.join(logging_dir, "*", "steps.csv"))
    assert len(files) == 1, files
    with open(files[0], encoding="utf-8") as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


def main():
    trainer, argv = sys.argv[1], sys.argv[2:]
    sys.path.insert(0, REPO)
    import library  # noqa: F401  (quiet MindSpore start-up, as the CLIs)
    from library.errors import run_cli

    cli = importlib.import_module(trainer)
    marker = os.environ.get("RELIABILITY_MARKER")
    if os.environ.get("RELIABILITY_PAUSE_AT_STEP"):
        pause_for_interrupt_at(int(os.environ["RELIABILITY_PAUSE_AT_STEP"]), marker)
    if os.environ.get("RELIABILITY_STALL_WRITE"):
        stall_write(os.environ["RELIABILITY_STALL_WRITE"], marker)
    run_cli(cli.main, argv)


if __name__ == "__main__":
    main()
