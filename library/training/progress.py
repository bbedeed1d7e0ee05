"""Progress bar (loss running average, lr, steps/s, ETA), per-step CSV log and TensorBoard events."""
import csv
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
            run_dir = os.path.join(logging_dir, (log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
            os.makedirs(run_dir, exist_ok=True)
            self.run_dir = run_dir
            self.csv_file = open(os.path.join(run_dir, "steps.csv"), "w", newline="", encoding="utf-8")
            self.csv = csv.writer(self.csv_file)
            self.csv.writerow(["step", "epoch", "loss", "loss_avg", "lr", "grad_norm", "time"])
            if tensorboard:
                self.writer = _tensorboard_writer(run_dir)

    def update(self, step, epoch, loss, lrs, grad_norm=None):
        self.recent.append(loss)
        self.recent = self.recent[-100:]
        avg = sum(self.recent) / len(self.recent)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lrs[0]:.2e}", epoch=epoch)
        if self.csv_file:
            self.csv.writerow([step, epoch, f"{loss:.6f}", f"{avg:.6f}", f"{lrs[0]:.6e}",
                               "" if grad_norm is None else f"{grad_norm:.6f}", f"{time.time():.3f}"])
            self.csv_file.flush()
        if self.writer:
            self.writer.add_scalar("loss/current", loss, step)
            self.writer.add_scalar("loss/average", avg, step)
            for i, lr in enumerate(lrs):
                self.writer.add_scalar(f"lr/group{i}", lr, step)
        return avg

    def write(self, message):
        self.bar.write(message)

    def close(self):
        self.bar.close()
        if self.csv_file:
            self.csv_file.close()
        if self.writer:
            self.writer.close()


def _tensorboard_writer(run_dir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(run_dir)
