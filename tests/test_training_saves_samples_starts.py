"""Which files and state folders a run leaves, when it samples, where it starts, and the validation loss: the
real loop on the toy method of test_reliability_loop (5 batches per epoch, a graph that compiles in seconds),
checked against kohya's train_network loop restated here (train_util's save/remove helpers, sample_images'
conditions, initial_step handling, the validation loop)."""
import csv
import glob
import math
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import ops

from library.errors import UserError
from library.formats.safetensors_io import read_safetensors
from library.training import session
from library.training.distributed import World
from library.training.loop import TrainingLoop
from test_reliability_loop import ToyData, ToyLatentSource, ToyMethod, ToySpec

BATCHES = 5  # ToyData: 5 batches per epoch


class RecordingData(ToyData):
    """ToyData that records which (epoch, batch) the loop trained on."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __getitem__(self, index):
        self.seen.append((self.epoch, index))
        return super().__getitem__(index)


def toy_args(output_dir, *argv, logs=None):
    parser = session.build_parser("toy", False, _network_options)
    argv = ["--output_dir", str(output_dir), "--output_name", "toy", "--learning_rate", "0.05", "--seed", "1",
            *(["--logging_dir", str(logs)] if logs else []), *argv]
    return session.parse_arguments(parser, argv)


def _network_options(parser):
    from library.training.args import add_network_trainer_arguments

    add_network_trainer_arguments(parser)


def run(output_dir, *argv, data=None, samples=None, logs=None, validation=None, method=None):
    def sample_fn(step, epoch):
        samples.append((step, epoch))
    loop = TrainingLoop(toy_args(output_dir, *argv, logs=logs), data or ToyData(), method or ToyMethod(),
                        ToyLatentSource(), ToySpec(), World(), sample_fn if samples is not None else None,
                        validation)
    loop.run()
    return loop


def remaining(folder):
    return sorted(os.listdir(folder))


def logged(logs):
    (path,) = glob.glob(os.path.join(logs, "*", "steps.csv"))
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- saving

def kohya_saves(total, every_steps=None, every_epochs=None, ratio=None, last_steps=None, last_epochs=None,
                last_steps_state=None, last_epochs_state=None, save_state=False):
    """kohya train_network's saves and removals (get_remove_*_no, save_and_remove_state_*), restated."""
    files = set()
    num_epochs = math.ceil(total / BATCHES)
    if ratio:
        every_epochs = math.floor(num_epochs / ratio) or 1
    step = 0
    for epoch in range(num_epochs):
        for _ in range(BATCHES):
            step += 1
            if every_steps is not None and step % every_steps == 0:
                files.add(f"toy-step{step:08d}.safetensors")
                if save_state:
                    files.add(f"toy-step{step:08d}-state")
                    keep = last_steps_state if last_steps_state else last_steps
                    if keep is not None:
                        old = step - keep - 1
                        old -= old % every_steps
                        if old > 0:
                            files.discard(f"toy-step{old:08d}-state")
                if last_steps is not None:
                    old = step - last_steps - 1
                    old -= old % every_steps
                    if old >= 0:
                        files.discard(f"toy-step{old:08d}.safetensors")
            if step >= total:
                break
        if every_epochs is not None and (epoch + 1) % every_epochs == 0 and (epoch + 1) < num_epochs:
            files.add(f"toy-{epoch + 1:06d}.safetensors")
            if last_epochs is not None and epoch + 1 - every_epochs * last_epochs >= 0:
                files.discard(f"toy-{epoch + 1 - every_epochs * last_epochs:06d}.safetensors")
            if save_state:
                files.add(f"toy-{epoch + 1:06d}-state")
                keep = last_epochs_state if last_epochs_state else last_epochs
                if keep is not None:
                    files.discard(f"toy-{epoch + 1 - every_epochs * keep:06d}-state")
    files.add("toy.safetensors")
    if save_state:
        files.add("toy-state")
    return sorted(files)


SAVE_CASES = [
    dict(total=20, every_steps=3, last_steps=7),
    dict(total=20, every_steps=3, last_steps=7, save_state=True, last_steps_state=4),
    dict(total=21, every_steps=2, last_steps=2, save_state=True),
    dict(total=30, every_epochs=1, last_epochs=2, save_state=True, last_epochs_state=1),
    dict(total=35, ratio=3, last_epochs=1, save_state=True),
    dict(total=40, every_epochs=2, every_steps=10, last_epochs=2, last_steps=10),
]


def _argv(case):
    names = {"total": "max_train_steps", "every_steps": "save_every_n_steps", "every_epochs": "save_every_n_epochs",
             "ratio": "save_n_epoch_ratio", "last_steps": "save_last_n_steps", "last_epochs": "save_last_n_epochs",
             "last_steps_state": "save_last_n_steps_state", "last_epochs_state": "save_last_n_epochs_state"}
    argv = []
    for key, value in case.items():
        if key == "save_state":
            argv += ["--save_state"] if value else []
        else:
            argv += [f"--{names[key]}", str(value)]
    return argv


@pytest.mark.parametrize("case", SAVE_CASES, ids=lambda c: " ".join(_argv(c)))
def test_saves_and_removals_follow_kohya(tmp_path, case):
    run(tmp_path, *_argv(case))
    assert remaining(tmp_path) == kohya_saves(**case)


def test_removals_by_number_spare_other_files(tmp_path):
    """Only the file of the number kohya's rule names is removed: another run's files stay."""
    foreign = ["toy-step00000001.safetensors", "toy-step00000005.safetensors", "other-step00000002.safetensors"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"x")
    run(tmp_path, "--max_train_steps", "8", "--save_every_n_steps", "2", "--save_last_n_steps", "2")
    assert remaining(tmp_path) == sorted(foreign + ["toy-step00000006.safetensors", "toy-step00000008.safetensors",
                                                    "toy.safetensors"])


def test_written_out_example(tmp_path):
    """--save_every_n_steps 2 --save_last_n_steps 3 over 8 steps: at step 6 the step-2 file goes (the save
    before 6 - 3), at 8 the step-4 one; the last step is saved too; states are kept per their own option."""
    run(tmp_path, "--max_train_steps", "8", "--save_every_n_steps", "2", "--save_last_n_steps", "3",
        "--save_state", "--save_last_n_steps_state", "1")
    assert remaining(tmp_path) == ["toy-state", "toy-step00000006.safetensors", "toy-step00000008-state",
                                   "toy-step00000008.safetensors", "toy.safetensors"]


@pytest.mark.parametrize("argv,message", [
    (("--save_last_n_steps", "0"), "--save_last_n_steps must be >= 1"),
    (("--save_n_epoch_ratio", "-1"), "--save_n_epoch_ratio must be >= 1"),
])
def test_bad_saving_values_are_refused(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        toy_args(tmp_path, *argv)


def test_saving_options_without_effect_are_named(tmp_path, caplog):
    toy_args(tmp_path, "--save_last_n_epochs", "2", "--save_last_n_steps_state", "3", "--save_every_n_steps", "4")
    assert "--save_last_n_epochs: no effect without --save_every_n_epochs" in caplog.text
    assert "--save_last_n_steps_state: no effect without --save_state" in caplog.text


# ------------------------------------------------------------------------------------------- samples

def kohya_samples(total, every_steps=None, every_epochs=None, at_first=False):
    """kohya: sample_images(epoch=0, step) before training, (None, step) after each step, (epoch, step) at the
    end of each epoch; sample_images_common decides."""
    calls = []

    def sample_images(epoch, steps):
        if steps == 0:
            if not at_first:
                return
        else:
            if every_steps is None and every_epochs is None:
                return
            if every_epochs is not None:
                if epoch is None or epoch % every_epochs != 0:
                    return
            elif steps % every_steps != 0 or epoch is not None:
                return
        calls.append((steps, epoch))

    sample_images(0, 0)
    step = 0
    for epoch in range(math.ceil(total / BATCHES)):
        for _ in range(BATCHES):
            step += 1
            sample_images(None, step)
            if step >= total:
                break
        sample_images(epoch + 1, step)
    return calls


@pytest.mark.parametrize("case", [
    dict(total=12, every_steps=4),
    dict(total=12, every_steps=5, at_first=True),
    dict(total=15, every_epochs=2),
    dict(total=12, every_steps=2, every_epochs=1),
    dict(total=12),
    dict(total=7, at_first=True),
], ids=str)
def test_samples_are_made_where_kohya_makes_them(tmp_path, case):
    argv = ["--max_train_steps", str(case["total"])]
    argv += ["--sample_every_n_steps", str(case["every_steps"])] if case.get("every_steps") else []
    argv += ["--sample_every_n_epochs", str(case["every_epochs"])] if case.get("every_epochs") else []
    argv += ["--sample_at_first"] if case.get("at_first") else []
    samples = []
    run(tmp_path, *argv, samples=samples)
    assert samples == kohya_samples(**case)


def test_sample_at_first_also_when_resuming(tmp_path):
    run(tmp_path / "a", "--max_train_steps", "6", "--save_every_n_steps", "3", "--save_state")
    samples = []
    run(tmp_path / "b", "--max_train_steps", "6", "--sample_at_first", "--sample_every_n_steps", "2",
        "--resume", str(tmp_path / "a" / "toy-step00000003-state"), samples=samples)
    assert samples == [(3, 0), (4, None), (6, None)]


# ------------------------------------------------------------------------------------------- starting step

def test_initial_step_with_skip_starts_counters_and_data_there(tmp_path):
    data = RecordingData()
    loop = run(tmp_path / "out", "--max_train_steps", "12", "--initial_step", "7", "--skip_until_initial_step",
               "--save_every_n_steps", "4", "--lr_scheduler", "linear", data=data, logs=tmp_path / "logs")
    assert data.seen[0] == (1, 2) and len(data.seen) == 5  # epoch 2, batch 3: the batches of 7 steps skipped
    rows = logged(tmp_path / "logs")
    assert [int(r["step"]) for r in rows] == [8, 9, 10, 11, 12]
    assert [int(r["epoch"]) for r in rows] == [2, 2, 2, 3, 3]
    # the lr schedule is not moved (kohya: it starts from the beginning without --resume)
    np.testing.assert_allclose([float(r["lr"]) for r in rows], [0.05 * (12 - k) / 12 for k in range(5)], rtol=1e-6)
    assert "toy-step00000008.safetensors" in remaining(tmp_path / "out") and loop.schedule_step == 5
    assert int(read_safetensors(str(tmp_path / "out" / "toy.safetensors"))[1]["step"]) == 12


def test_initial_epoch_without_skip_only_moves_the_epoch(tmp_path):
    """kohya: without --skip_until_initial_step the epoch counter starts at initial_step // steps per epoch,
    no batch is skipped, the step counter starts at 0 and the run ends when its epochs run out."""
    data = RecordingData()
    run(tmp_path / "out", "--max_train_steps", "12", "--initial_epoch", "2", "--save_every_n_epochs", "1",
        data=data, logs=tmp_path / "logs")
    assert data.seen[0] == (1, 0) and len(data.seen) == 10
    rows = logged(tmp_path / "logs")
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert remaining(tmp_path / "out") == ["toy-000002.safetensors", "toy.safetensors"]


def test_initial_step_zero_and_too_large(tmp_path):
    data = RecordingData()
    run(tmp_path / "a", "--max_train_steps", "3", "--initial_step", "0", "--skip_until_initial_step", data=data)
    assert data.seen[0] == (0, 0)
    with pytest.raises(UserError, match="--initial_step 12 must be less than --max_train_steps 12"):
        toy_args(tmp_path, "--max_train_steps", "12", "--initial_step", "12")
    with pytest.raises(UserError, match="--initial_epoch 4 starts at step 15"):
        run(tmp_path / "b", "--max_train_epochs", "3", "--initial_epoch", "4")
    with pytest.raises(UserError, match="--initial_epoch must be >= 1"):
        toy_args(tmp_path, "--initial_epoch", "0")


def test_resume_with_initial_step_keeps_the_schedule_and_weights_of_the_state(tmp_path):
    common = ["--max_train_steps", "15", "--lr_scheduler", "cosine", "--save_every_n_steps", "4", "--save_state"]
    run(tmp_path / "a", *common)
    state = tmp_path / "a" / "toy-step00000004-state"
    data = RecordingData()
    resumed = run(tmp_path / "b", *common, "--resume", str(state), "--initial_step", "10",
                  "--skip_until_initial_step", data=data, logs=tmp_path / "logs")
    assert data.seen[0] == (2, 0)
    rows = logged(tmp_path / "logs")
    assert [int(r["step"]) for r in rows] == [11, 12, 13, 14, 15]
    # the schedule continues from the state's 4 steps, whatever the step counter says
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * k / 15)) for k in range(4, 9)]
    np.testing.assert_allclose([float(r["lr"]) for r in rows], expected, rtol=1e-6)
    assert resumed.schedule_step == 9


def test_resume_after_initial_step_is_exact(tmp_path):
    """The schedule position and the loss average travel with the state: a resumed run logs what the
    uninterrupted one logged (loss, loss_avg, lr). (Resumed with the --initial_step options again, those would
    set the start instead of the state, as in kohya.)"""
    common = ["--max_train_steps", "14", "--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_num_cycles", "2",
              "--save_every_n_steps", "4", "--save_state"]
    run(tmp_path / "a", *common, "--initial_step", "3", "--skip_until_initial_step", logs=tmp_path / "logs_a")
    run(tmp_path / "b", *common, "--resume", str(tmp_path / "a" / "toy-step00000008-state"), logs=tmp_path / "logs_b")
    straight = {r["step"]: r for r in logged(tmp_path / "logs_a")}
    resumed = logged(tmp_path / "logs_b")
    assert [int(r["step"]) for r in resumed] == list(range(9, 15))
    for row in resumed:
        for key in ("loss", "loss_avg", "lr", "epoch"):
            assert float(row[key]) == pytest.approx(float(straight[row["step"]][key]), rel=1e-6), (row["step"], key)


# ------------------------------------------------------------------------------------------- validation loss

class ValidationData(ToyData):
    def __init__(self):
        super().__init__()
        self.latents = np.random.default_rng(5).standard_normal((3, 2, 4, 2, 2)).astype(np.float32)
        self.set_epoch(0)


def reference_validation_loss(weight, data, seed, timesteps, batches):
    """kohya's validation of the toy objective, in numpy: a generator seeded with the validation seed for the
    noise, the latent source's generator seeded likewise, each batch at each fixed timestep (kohya's
    process_batch encodes uncached images again for every timestep: a new latent sample each time)."""
    noise_rng, latent_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    losses = []
    for index in range(batches):
        batch = data[index]
        for t in timesteps:
            latents = batch["latents"] + 0.1 * latent_rng.standard_normal(batch["latents"].shape).astype(np.float32)
            latents = latents * ToySpec.vae_scaling_factor
            noise = noise_rng.standard_normal(latents.shape).astype(np.float32)
            assert noise_rng.integers(t, t + 1, size=(latents.shape[0],))[0] == t
            prediction = latents * weight.reshape(1, 4, 1, 1)
            per_sample = ((prediction - noise) ** 2).mean(axis=(1, 2, 3))
            losses.append(float((per_sample * batch["loss_weights"] * (1 + t / 1000.0)).mean()))
    return float(np.mean(losses))


def test_validation_losses_at_the_requested_steps_and_epochs(tmp_path):
    validation = ValidationData()
    loop = run(tmp_path / "a", "--max_train_steps", "12", "--validate_every_n_steps", "4",
               "--validate_every_n_epochs", "2", "--validation_seed", "21", "--max_validation_steps", "2",
               "--min_timestep", "100", logs=tmp_path / "logs_a", validation=validation)
    rows = logged(tmp_path / "logs_a")
    steps = {int(r["step"]) for r in rows if r["val_loss"]}
    epochs = {int(r["step"]) for r in rows if r["val_epoch_loss"]}
    assert steps == {4, 8, 12} and epochs == {10}  # epoch 2 ends at step 10; epoch 3 (step 12) is odd
    assert loop.validator.timesteps == [280, 460, 640, 820]  # linspace(100, 1000, 6)[1:-1], as kohya
    # the same weights give the same loss, equal to the reference computation
    first = loop.validator.run(loop._validation_inputs)
    assert loop.validator.run(loop._validation_inputs) == first
    expected = reference_validation_loss(loop.method.weight.asnumpy(), ValidationData(), 21, [280, 460, 640, 820], 2)
    assert first == pytest.approx(expected, rel=1e-5)
    assert float(rows[-1]["val_loss"]) == pytest.approx(first, rel=1e-6)  # step 12: the final weights

    # validation changes nothing in training: same losses and weights without it
    plain = run(tmp_path / "b", "--max_train_steps", "12", "--min_timestep", "100", logs=tmp_path / "logs_b")
    assert [r["loss"] for r in logged(tmp_path / "logs_b")] == [r["loss"] for r in rows]
    np.testing.assert_array_equal(plain.method.weight.asnumpy(), loop.method.weight.asnumpy())


def test_validation_default_is_every_epoch_and_survives_resume(tmp_path):
    common = ["--max_train_steps", "12", "--save_every_n_steps", "6", "--save_state"]
    run(tmp_path / "a", *common, logs=tmp_path / "logs_a", validation=ValidationData())
    straight = logged(tmp_path / "logs_a")
    assert [int(r["step"]) for r in straight if r["val_epoch_loss"]] == [5, 10, 12]
    assert not any(r["val_loss"] for r in straight)
    run(tmp_path / "b", *common, "--resume", str(tmp_path / "a" / "toy-step00000006-state"),
        logs=tmp_path / "logs_b", validation=ValidationData())
    resumed = logged(tmp_path / "logs_b")
    assert resumed == [{**r, "time": resumed[i]["time"]} for i, r in enumerate(straight[6:])]


@pytest.mark.parametrize("argv,message", [
    (("--validation_split", "1.0"), "--validation_split must be >= 0 and < 1"),
    (("--validation_split", "-0.1"), "--validation_split must be >= 0 and < 1"),
    (("--validate_every_n_steps", "-1"), "--validate_every_n_steps must be >= 1"),
    (("--max_validation_steps", "-2"), "--max_validation_steps must be >= 1"),
])
def test_bad_validation_options_are_refused(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        toy_args(tmp_path, *argv)


def test_validation_split_in_the_dataset_config_is_checked_before_loading(tmp_path, caplog):
    config = tmp_path / "dataset.toml"
    config.write_text("[general]\nresolution = 64\n[[datasets]]\nvalidation_split = 1.0\n"
                      "[[datasets.subsets]]\nimage_dir = 'img'\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"datasets\[0\]\.validation_split must be >= 0 and < 1"):
        toy_args(tmp_path, "--dataset_config", str(config))
    config.write_text("[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'img'\n",
                      encoding="utf-8")
    toy_args(tmp_path, "--dataset_config", str(config), "--validate_every_n_steps", "5")
    assert "--validate_every_n_steps: no effect, no dataset holds images out for validation" in caplog.text


class DropoutObjective(ToyMethod().objective.__class__):
    """The toy objective with a dropout on the prediction while training (as LoRA's network dropout)."""

    def construct(self, latents, noise, timesteps, loss_weights):
        prediction = latents * self.weight.reshape((1, 4, 1, 1))
        if self.training:
            prediction = ops.dropout(prediction, p=0.5)
        per_sample = ops.mean((prediction - noise) ** 2, axis=(1, 2, 3))
        return ops.mean(per_sample * loss_weights * (1.0 + ops.cast(timesteps, ms.float32) / 1000.0))


def test_validation_runs_with_dropout_off_and_training_keeps_it(tmp_path):
    method = ToyMethod()
    method.objective = DropoutObjective(method.weight)
    loop = run(tmp_path, "--max_train_steps", "3", "--validate_every_n_steps", "1", "--learning_rate", "0",
               method=method, validation=ValidationData(), logs=tmp_path / "logs")
    rows = logged(tmp_path / "logs")
    # lr 0: the weights never change, so every validation (dropout off, fixed noise) gives the same loss...
    assert len({r["val_loss"] for r in rows}) == 1
    expected = reference_validation_loss(method.weight.asnumpy(), ValidationData(), 1, [200, 400, 600, 800], 3)
    assert float(rows[0]["val_loss"]) == pytest.approx(expected, rel=1e-5)
    # ...and the training step still drops (back in training mode after each validation)
    assert loop.runner.cells()[0].training and method.objective.training
    plain = ToyMethod()
    run(tmp_path / "plain", "--max_train_steps", "3", "--learning_rate", "0", method=plain, logs=tmp_path / "plain_logs")
    assert [r["loss"] for r in rows] != [r["loss"] for r in logged(tmp_path / "plain_logs")]
