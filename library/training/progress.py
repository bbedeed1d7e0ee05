"""Progress bar (loss running average, lr, steps/s, ETA), per-step CSV log and TensorBoard events.

The CSV log is the one file written as it grows rather than atomically (rewriting it every step would cost
O(steps^2)): each row goes out in one `write` call on an append-mode file and is flushed, so a crash can at
worst lose the row being written, never garble earlier ones. Every run (a resumed one too) gets its own folder.
Losses are written with 9 significant digits, enough to round-trip a float32 exactly.
"""
import csv
import io
import os
import time

from tqdm import tqdm


class TrainingProgress:
    def __init__(self, total_steps, initial_step=0, logging_dir=None, log_prefix=None, enabled=True,
                 tensorboard=True):
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="steps", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1)
        self.recent = []
        self.csv_file = None
        self.writer = None
        if logging_dir and enabled:
            run_dir = _new_run_dir(logging_dir, (log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
            self.run_dir = run_dir
            self.csv_file = open(os.path.join(run_dir, "steps.csv"), "a", newline="", encoding="utf-8")
            self._write_row(["step", "epoch", "loss", "loss_avg", "lr", "grad_norm", "time"])
            if tensorboard:
                self.writer = _tensorboard_writer(run_dir)

    def update(self, step, epoch, loss, lrs, grad_norm=None):
        self.recent.append(loss)
        self.recent = self.recent[-100:]
        avg = sum(self.recent) / len(self.recent)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lrs[0]:.2e}", epoch=epoch)
        if self.csv_file:
            self._write_row([step, epoch, f"{loss:.9g}", f"{avg:.9g}", f"{lrs[0]:.9g}",
                             "" if grad_norm is None else f"{grad_norm:.9g}", f"{time.time():.3f}"])
        if self.writer:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", avg, step)
            for i, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{i}", lr, step)
        return avg

    def _write_row(self, values):
        line = io.StringIO()
        csv.writer(line).writerow(values)
        self.csv_file.write(line.getvalue())  # one row, one write: a crash cannot leave half a row behind
        self.csv_file.flush()

    def write(self, message):
        self.bar.write(message)

    def close(self):
        self.bar.close()
        if self.csv_file:
            self.csv_file.close()
        if self.writer:
            self.writer.close()


def _new_run_dir(logging_dir, name):
    """`logging_dir/name`, or `name_2`, `name_3`... when a run started in the same second already has it."""
    os.makedirs(logging_dir, exist_ok=True)
    candidate, number = name, 1
    while True:
        path = os.path.join(logging_dir, candidate)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            number += 1
            candidate = f"{name}_{number}"


def _tensorboard_writer(run_dir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(run_dir)
