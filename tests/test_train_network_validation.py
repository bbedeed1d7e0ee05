"""train_network.py with a dataset `validation_split`: kohya's validation loss on the tiny SD1 checkpoint.

Three runs share the checks: A trains a LoRA (latents encoded per batch) with the split and validates every 2
steps and at each epoch end; B trains on A's training images alone without validation; C resumes A from its
step-6 state. B must log A's training losses (validation draws nothing from the training random streams), C
must log A's training and validation losses (the same weights give the same validation loss: fixed timesteps
and noise). A also carries schedule and saving options of kohya's. (No network dropout here: MindSpore's
dropout masks are not reproducible across graphs and resumes; that validation turns dropout off is tested on
the toy loop in test_training_saves_samples_starts.py.)
"""
import csv
import glob
import os
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

import train_network as cli
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.data.build import build_dataset_group

STEPS = 8  # 2 training images x 2 repeats = 4 batches per epoch: 2 epochs


def _images(folder, count):
    os.makedirs(folder)
    rng = np.random.default_rng(4)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
            f.write(f"sks dog, photo {i}")


def _config(path, image_dir, split):
    path.write_text(f"[general]\nresolution = 64\ncaption_extension = '.txt'\n[[datasets]]\nbatch_size = 1\n"
                    f"validation_split = {split}\n[[datasets.subsets]]\nimage_dir = '{image_dir}'\n"
                    f"num_repeats = 2\n", encoding="utf-8")
    return str(path)


def _options(root, config, out, *extra):
    return ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"), "--dataset_config", config,
            "--network_train_unet_only", "--network_dim", "4", "--network_alpha", "2",
            "--learning_rate", "5e-3", "--lr_scheduler", "cosine_with_min_lr", "--lr_scheduler_min_lr_ratio", "0.1",
            "--lr_warmup_steps", "1", "--max_train_steps", str(STEPS), "--seed", "7", "--output_dir", str(root / out),
            "--output_name", "dog", "--logging_dir", str(root / f"logs_{out}"), *extra]


VALIDATION = ["--validate_every_n_steps", "2", "--validation_seed", "3", "--max_validation_steps", "3",
              "--save_every_n_steps", "2", "--save_last_n_steps", "2", "--save_state", "--save_last_n_steps_state", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_validation")
    ensure_tiny_checkpoint("tiny-sd15", root / "tiny-sd15.safetensors")
    _images(root / "img", 4)
    split = _config(root / "split.toml", root / "img", 0.5)
    assert cli.main(_options(root, split, "a", *VALIDATION)) == 0

    # B: the images A trained on, in a folder of their own (named so that they list in A's order), no split
    parser = cli.session.build_parser("t", True, cli.add_network_arguments)
    # (--validation_seed also seeds the split, as kohya's dataset-level fallback)
    train = build_dataset_group(cli.session.parse_arguments(parser, _options(root, split, "x", *VALIDATION)), seed=7)
    os.makedirs(root / "train_only")
    for k, item in enumerate(train.items):
        stem = os.path.splitext(item.path)[0]
        shutil.copy(item.path, root / "train_only" / f"{k}_{os.path.basename(item.path)}")
        shutil.copy(stem + ".txt", root / "train_only" / f"{k}_{os.path.basename(stem)}.txt")
    assert len(train.items) == 2
    assert cli.main(_options(root, _config(root / "plain.toml", root / "train_only", 0.0), "b")) == 0

    state = root / "a" / "dog-step00000006-state"
    assert cli.main(_options(root, split, "c", *VALIDATION, "--resume", str(state))) == 0
    return root


def _rows(root, name):
    (path,) = glob.glob(str(root / f"logs_{name}" / "*" / "steps.csv"))
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tensorboard_scalars(root, name):
    """{tag: {step: value}} from the event file (TFRecord framing, tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2

    (path,) = glob.glob(str(root / f"logs_{name}" / "*" / "events.out.tfevents.*"))
    scalars = {}
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_validation_losses_are_logged_at_the_requested_steps(runs):
    rows = _rows(runs, "a")
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [2, 4, 6, 8]
    assert [int(r["step"]) for r in rows if r["val_epoch_loss"]] == [4, 8]  # kohya: every epoch by default
    values = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert all(np.isfinite(values)) and len(set(values)) == 4  # the weights change between validations
    for row in rows:
        if row["val_epoch_loss"]:
            assert row["val_epoch_loss"] == row["val_loss"]  # the same weights: one computation

    scalars = _tensorboard_scalars(runs, "a")
    step_average = scalars["loss/validation/step_average"]
    assert sorted(step_average) == [2, 4, 6, 8]
    np.testing.assert_allclose([step_average[s] for s in (2, 4, 6, 8)], values, rtol=1e-6)
    averages = {int(r["step"]): float(r["loss_avg"]) for r in rows}
    divergence = scalars["loss/validation/step_divergence"]
    np.testing.assert_allclose([divergence[s] for s in (2, 4, 6, 8)],
                               [v - averages[s] for s, v in zip((2, 4, 6, 8), values)], rtol=1e-5, atol=1e-7)
    assert sorted(scalars["loss/validation/epoch_average"]) == [1, 2]  # kohya logs epoch values at the epoch


def test_validation_does_not_change_the_training_losses(runs):
    a, b = _rows(runs, "a"), _rows(runs, "b")
    assert "val_loss" not in b[0]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert len({r["loss"] for r in a}) == STEPS


def test_same_weights_give_the_same_validation_loss_after_resume(runs):
    a = {int(r["step"]): r for r in _rows(runs, "a")}
    c = _rows(runs, "c")
    assert [int(r["step"]) for r in c] == [7, 8]
    for row in c:
        for key in ("loss", "loss_avg", "lr", "val_loss", "val_epoch_loss"):
            assert row[key] == a[int(row["step"])][key], (row["step"], key)


def test_kohya_saves_with_validation(runs):
    assert sorted(os.listdir(runs / "a")) == ["dog-state", "dog-step00000006-state", "dog-step00000006.safetensors",
                                              "dog-step00000008-state", "dog-step00000008.safetensors",
                                              "dog.safetensors"]


def test_validation_settings_are_in_the_lora_metadata(runs):
    from safetensors import safe_open

    with safe_open(str(runs / "a" / "dog.safetensors"), "np") as f:
        metadata = f.metadata()
    assert metadata["ss_validate_every_n_steps"] == "2" and metadata["ss_max_validation_steps"] == "3"
    assert metadata["ss_validation_seed"] == "3" and metadata["ss_validate_every_n_epochs"] == "None"
    assert metadata["ss_num_validation_images"] == "4"  # 2 held-out images x 2 repeats, as kohya counts them
    with safe_open(str(runs / "b" / "dog.safetensors"), "np") as f:
        assert f.metadata()["ss_num_validation_images"] == "0"
