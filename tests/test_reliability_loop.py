"""The shared training loop's failure handling and resume, on a toy method whose graph compiles in seconds.

The loop, the compiled train step (NaN updates skipped), the state files and the writers are the real ones;
only the model is a 4-weight toy, so NaN losses, exploding weights, a full disk during a save and Ctrl-C can be
forced at an exact step. The CLI-level versions with real models are in test_reliability_resume_*.py.
"""
import builtins
import errno
import os
import signal

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops, Tensor, Parameter

from library.errors import run_cli
from library.formats.safetensors_io import read_safetensors, write_safetensors
from library.models.weights import assign_array
from library.training import session
from library.training.distributed import World
from library.training.loop import TrainingLoop, KeyboardInterruptSaved
from test_reliability_runner import logged_losses

STEPS = 6


class ToyObjective(nn.Cell):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def construct(self, latents, noise, timesteps, loss_weights):
        prediction = latents * self.weight.reshape((1, 4, 1, 1))
        per_sample = ops.mean((prediction - noise) ** 2, axis=(1, 2, 3))
        return ops.mean(per_sample * loss_weights * (1.0 + ops.cast(timesteps, ms.float32) / 1000.0))


class ToyMethod:
    """The method interface the loop uses (see library/training/method.py), with hooks to break it."""
    loss_scale = None
    file_extension = ".safetensors"

    def __init__(self, on_update=None):
        self.weight = Parameter(Tensor(np.linspace(0.5, 1.5, 4).astype(np.float32)), name="toy.weight")
        self.trainable = {"toy.weight": self.weight}
        self.objective = ToyObjective(self.weight)
        self.on_update = on_update

    def param_groups(self, lr):
        return [{"params": [self.weight], "lr": lr}]

    def step_inputs(self, batch, latents, noise, timesteps):
        return (Tensor(latents), Tensor(noise), Tensor(timesteps.astype(np.int32)),
                Tensor(np.asarray(batch["loss_weights"], np.float32)))

    def after_update(self, step):
        if self.on_update:
            self.on_update(self, step)

    def save(self, path, step, epoch):
        write_safetensors(path, {"toy.weight": self.weight.asnumpy()}, {"step": str(step)})


class ToyData:
    """5 batches per epoch in an epoch-dependent order (as the real dataset: a function of seed and epoch)."""

    def __init__(self, poison_batch=None):
        self.latents = np.random.default_rng(0).standard_normal((5, 1, 4, 2, 2)).astype(np.float32)
        self.poison_batch = poison_batch
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.order = np.random.default_rng(100 + epoch).permutation(len(self.latents))

    def set_step(self, step):
        self.step = step

    def __len__(self):
        return len(self.latents)

    def __getitem__(self, index):
        latents = self.latents[self.order[index]]
        if (self.epoch, index) == self.poison_batch:
            latents = latents * np.float32("nan")
        return {"latents": latents, "loss_weights": np.ones(1, np.float32)}


class ToyLatentSource:
    """Latents plus noise from its own generator: a resumed run must restore it (like the VAE sampling)."""

    def __init__(self):
        self.rng = np.random.default_rng(9)

    def __call__(self, batch):
        return batch["latents"] + 0.1 * self.rng.standard_normal(batch["latents"].shape).astype(np.float32)

    def rng_state(self):
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state


class ToySpec:
    vae_scaling_factor = 0.5


def toy_args(output_dir, *extra):
    parser = session.build_parser("toy", False, lambda p: None)
    return parser.parse_args(["--output_dir", str(output_dir), "--output_name", "toy", "--max_train_steps",
                              str(STEPS), "--learning_rate", "0.05", "--save_every_n_steps", "2", "--seed", "1",
                              "--lr_scheduler", "cosine", *extra])


def toy_loop(output_dir, *extra, method=None, data=None):
    return TrainingLoop(toy_args(output_dir, *extra), data or ToyData(), method or ToyMethod(), ToyLatentSource(),
                        ToySpec(), World())


def run_as_cli(loop):
    """Run the loop through the CLI wrapper; (exit code, stderr text) via the SystemExit it raises."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda argv: loop.run() and 0, argv=[])
    return exit_info.value.code


def saved_step(path):
    tensors, metadata = read_safetensors(str(path))
    assert np.isfinite(tensors["toy.weight"]).all()
    return int(metadata["step"])


def visible_and_hidden(folder):
    names = sorted(os.listdir(folder))
    return [n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".")]


# ---------------------------------------------------------------------------------------------- NaN / inf

def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_save(tmp_path, capsys):
    # epoch 0, batch 2 is the 3rd update: its loss is NaN
    loop = toy_loop(tmp_path, "--save_state", method=ToyMethod(), data=ToyData(poison_batch=(0, 2)))
    assert run_as_cli(loop) == 2
    err = capsys.readouterr().err
    assert "the loss became NaN/inf at step 3" in err
    assert str(tmp_path / "toy-step00000002.safetensors") in err and "Traceback" not in err
    assert err.count("error:") == 1
    visible, hidden = visible_and_hidden(tmp_path)
    assert visible == ["toy-step00000002-state", "toy-step00000002.safetensors"] and hidden == []
    assert saved_step(tmp_path / "toy-step00000002.safetensors") == 2
    # the NaN update was skipped: the weights in memory are still finite
    assert np.isfinite(loop.method.weight.asnumpy()).all()


def test_exploded_weights_are_never_saved(tmp_path, capsys):
    def explode(method, step):
        if step == 4:
            assign_array(method.weight, np.full(4, np.inf, np.float32))

    loop = toy_loop(tmp_path, method=ToyMethod(on_update=explode))
    assert run_as_cli(loop) == 2
    err = capsys.readouterr().err
    assert "weights became NaN/inf by step 4" in err and "Traceback" not in err
    assert str(tmp_path / "toy-step00000002.safetensors") in err
    assert visible_and_hidden(tmp_path) == (["toy-step00000002.safetensors"], [])
    assert saved_step(tmp_path / "toy-step00000002.safetensors") == 2


# ---------------------------------------------------------------------------------------------- disk full

def test_disk_full_during_a_save_names_the_file_and_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    real_open = builtins.open

    class HalfThenFull:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_disk_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".toy-step00000004.safetensors." in os.fspath(file):
            return HalfThenFull(handle)
        return handle

    monkeypatch.setattr(builtins, "open", full_disk_open)
    assert run_as_cli(toy_loop(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"could not save {tmp_path / 'toy-step00000004.safetensors'}: the disk is full" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert visible_and_hidden(tmp_path) == (["toy-step00000002.safetensors"], [])  # no temp file left
    assert saved_step(tmp_path / "toy-step00000002.safetensors") == 2


# ---------------------------------------------------------------------------------------------- Ctrl-C + resume

def _interrupt_at(step_to_stop):
    def on_update(method, step):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, handled by the loop's handler
    return on_update


@pytest.mark.parametrize("accumulation", [1, 2])
def test_ctrl_c_then_resume_repeats_the_uninterrupted_losses(tmp_path, accumulation):
    """5 batches per epoch: with accumulation 2 an epoch is 3 updates, the last one from a single batch."""
    common = ["--gradient_accumulation_steps", str(accumulation), "--save_state"]
    straight = toy_loop(tmp_path / "a", *common, "--logging_dir", str(tmp_path / "logs_a"))
    assert straight.run() == STEPS

    stop_at = 2 if accumulation == 1 else 4  # mid-epoch in both cases
    interrupted = toy_loop(tmp_path / "b", *common, "--logging_dir", str(tmp_path / "logs_b"),
                           method=ToyMethod(on_update=_interrupt_at(stop_at)))
    with pytest.raises(KeyboardInterruptSaved) as stop:
        interrupted.run()
    assert stop.value.path == str(tmp_path / "b" / f"toy-step{stop_at:08d}-state")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop put the handler back

    resumed = toy_loop(tmp_path / "c", *common, "--logging_dir", str(tmp_path / "logs_c"),
                       "--resume", stop.value.path)
    assert resumed.run() == STEPS
    a, b, c = (logged_losses(tmp_path / f"logs_{x}") for x in "abc")
    assert sorted(a) == list(range(1, STEPS + 1))
    assert sorted(b) == list(range(1, stop_at + 1)) and sorted(c) == list(range(stop_at + 1, STEPS + 1))
    np.testing.assert_allclose([b.get(s, c.get(s)) for s in a], [a[s] for s in a], rtol=1e-6)
    final_a, _ = read_safetensors(str(tmp_path / "a" / "toy.safetensors"))
    final_c, _ = read_safetensors(str(tmp_path / "c" / "toy.safetensors"))
    np.testing.assert_allclose(final_c["toy.weight"], final_a["toy.weight"], rtol=1e-6)
