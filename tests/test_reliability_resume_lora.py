"""train_network.py: kill -9 in the middle of a save leaves the previous file intact, and a resume from the
last state written before the kill logs the same per-step losses as the killed run did.

The killed run saves LoRA + state every 2 steps and is SIGKILLed while its final save is half-written over an
older `dog.safetensors`; the resumed run starts from the step-4 state (an epoch boundary: 4 batches per
epoch) in the same folder, reuses the disk latent cache, and must log steps 5..8 exactly as the killed run
logged them. Two trainer runs serve every check.
"""
import os
import signal

import numpy as np
import pytest
from PIL import Image

import train_network as cli
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.formats.lora import read_lora_file, save_lora
from test_reliability_runner import logged_losses, start, wait_for_marker

STEPS, RESUME_FROM = 8, 4


def _dataset(folder):
    os.makedirs(folder)
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
            f.write(f"sks dog, photo {i}, grass, sunny")


def _options(root, logs):
    return ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"),
            "--train_data_dir", str(root / "img"), "--resolution", "64", "--network_train_unet_only",
            "--network_dim", "4", "--network_alpha", "2", "--learning_rate", "5e-3",
            "--lr_scheduler", "linear", "--max_train_steps", str(STEPS), "--save_every_n_steps", "2",
            "--save_state", "--shuffle_caption", "--cache_latents_to_disk", "--seed", "11",
            "--output_dir", str(root / "out"), "--output_name", "dog", "--logging_dir", str(root / logs)]


def _older_lora(path):
    tensors = {"lora_unet_older.lora_down.weight": np.ones((2, 8), np.float32),
               "lora_unet_older.lora_up.weight": np.ones((8, 2), np.float32),
               "lora_unet_older.alpha": np.array(1.0, np.float32)}
    save_lora(str(path), tensors, {"ss_training_comment": "older"})
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_lora")
    ensure_tiny_checkpoint("tiny-sd15", root / "tiny-sd15.safetensors")
    _dataset(root / "img" / "2_sks dog")  # 2 images x 2 repeats = 4 batches per epoch
    os.makedirs(root / "out")
    older = _older_lora(root / "out" / "dog.safetensors")

    marker = root / "stalled"
    process = start("train_network", _options(root, "logs_killed"),
                    RELIABILITY_STALL_WRITE=".dog.safetensors.", RELIABILITY_MARKER=marker)
    wait_for_marker(process, marker)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    after_kill = {"rc": process.returncode, "files": sorted(os.listdir(root / "out")),
                  "final_bytes": (root / "out" / "dog.safetensors").read_bytes()}

    state = root / "out" / f"dog-step{RESUME_FROM:08d}-state"
    resumed_ok = cli.main(_options(root, "logs_resumed") + ["--resume", str(state)])
    return root, older, after_kill, resumed_ok


def test_kill_during_a_save_keeps_the_previous_file(runs):
    root, older, after_kill, _ = runs
    assert after_kill["rc"] == -signal.SIGKILL
    assert after_kill["final_bytes"] == older  # not replaced by the half-written one
    visible = [f for f in after_kill["files"] if not f.startswith(".")]
    hidden = [f for f in after_kill["files"] if f.startswith(".")]
    # (kohya: the last step is a step save too, and --save_state writes the final state before the file)
    assert visible == ["dog-state", "dog-step00000002-state", "dog-step00000002.safetensors",
                       "dog-step00000004-state", "dog-step00000004.safetensors", "dog-step00000006-state",
                       "dog-step00000006.safetensors", "dog-step00000008-state", "dog-step00000008.safetensors",
                       "dog.safetensors"]
    # the kill really hit mid-save: the half-written temp file is the only leftover, and it is hidden
    assert len(hidden) == 1 and hidden[0].startswith(".dog.safetensors.") and hidden[0].endswith(".tmp")


def test_files_written_before_the_kill_load(runs):
    root, _, _, _ = runs
    for step in (2, 4):  # (the resumed run rewrote steps 6 and 8 and the final file)
        tensors, metadata = read_lora_file(str(root / "out" / f"dog-step{step:08d}.safetensors"))
        assert metadata["ss_steps"] == str(step) and all(np.isfinite(t).all() for t in tensors.values())
    # the state the resume starts from is complete and holds the LoRA weights of that step
    state = root / "out" / f"dog-step{RESUME_FROM:08d}-state"
    assert sorted(os.listdir(state)) == ["optimizer.safetensors", "train_state.json", "trainable.safetensors"]


def test_resumed_run_logs_the_losses_of_the_killed_run(runs):
    root, _, _, resumed_ok = runs
    assert resumed_ok == 0
    killed, resumed = logged_losses(root / "logs_killed"), logged_losses(root / "logs_resumed")
    assert sorted(killed) == list(range(1, STEPS + 1))  # every step was logged before the final save
    assert sorted(resumed) == list(range(RESUME_FROM + 1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in resumed], [killed[s] for s in resumed], rtol=1e-6)
    assert len({round(v, 6) for v in killed.values()}) == STEPS


def test_resume_in_place_replaced_the_older_file_and_cleaned_the_leftover(runs):
    root, older, _, resumed_ok = runs
    assert resumed_ok == 0
    assert not [f for f in os.listdir(root / "out") if f.startswith(".")]
    final = root / "out" / "dog.safetensors"
    assert final.read_bytes() != older
    tensors, metadata = read_lora_file(str(final))
    assert metadata["ss_steps"] == str(STEPS) and all(np.isfinite(t).all() for t in tensors.values())
