"""Progress bar (loss running average, lr, steps/s, ETA), per-step CSV log and TensorBoard events.

With a validation dataset the CSV gets two more columns on the row of the step they follow: `val_loss` (the
validation every --validate_every_n_steps) and `val_epoch_loss` (the one at the end of an epoch); TensorBoard
gets kohya's tags loss/validation/{step,epoch}_{average,divergence} (epoch ones at the epoch number).

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
                 tensorboard=True, validation=False, recent=None):
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="steps", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1)
        self.recent = list(recent or [])  # the losses of the running average (part of a resumable state)
        self.validation = validation
        self.last_validation = None
        self.csv_file = None
        self.writer = None
        if logging_dir and enabled:
            run_dir = _new_run_dir(logging_dir, (log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
            self.run_dir = run_dir
            self.csv_file = open(os.path.join(run_dir, "steps.csv"), "a", newline="", encoding="utf-8")
            header = ["step", "epoch", "loss", "loss_avg", "lr", "grad_norm", "time"]
            self._write_row(header + (["val_loss", "val_epoch_loss"] if validation else []))
            if tensorboard:
                self.writer = _tensorboard_writer(run_dir)

    def update(self, step, epoch, loss, lrs, grad_norm=None, step_validation=None, epoch_validation=None):
        """One optimizer step; `*_validation`: the validation losses computed right after it, if any."""
        self.recent.append(loss)
        self.recent = self.recent[-100:]
        avg = sum(self.recent) / len(self.recent)
        self.bar.update(1)
        if step_validation is not None or epoch_validation is not None:
            self.last_validation = epoch_validation if step_validation is None else step_validation
        postfix = {"loss": f"{avg:.4f}", "lr": f"{lrs[0]:.2e}", "epoch": epoch}
        if self.last_validation is not None:
            postfix["val_loss"] = f"{self.last_validation:.4f}"
        self.bar.set_postfix(**postfix)
        if self.csv_file:
            row = [step, epoch, f"{loss:.9g}", f"{avg:.9g}", f"{lrs[0]:.9g}",
                   "" if grad_norm is None else f"{grad_norm:.9g}", f"{time.time():.3f}"]
            if self.validation:
                row += ["" if v is None else f"{v:.9g}" for v in (step_validation, epoch_validation)]
            self._write_row(row)
        if self.writer:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", avg, step)
            for i, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{i}", lr, step)
            # kohya's tags; the divergence is the validation loss minus the training running average
            if step_validation is not None:
                self.writer.add_scalar("loss/validation/step_average", step_validation, step)
                self.writer.add_scalar("loss/validation/step_divergence", step_validation - avg, step)
            if epoch_validation is not None:
                self.writer.add_scalar("loss/validation/epoch_average", epoch_validation, epoch)
                self.writer.add_scalar("loss/validation/epoch_divergence", epoch_validation - avg, epoch)
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
