"""train_textual_inversion.py: Ctrl-C mid-training saves a resumable state and exits 130; `--resume` from it
logs the same per-step losses as an uninterrupted run.

The stop is mid-epoch (step 3 of a 6-batch epoch) and the resumed run crosses into the next epoch; repeats,
caption shuffling, flips and random crops are on and latents are NOT cached, so the data position, the
per-sample augmentation and the VAE sampling generator all have to be restored. Three trainer runs (the
slow part is compiling each run's graph) serve every check.
"""
import os
import signal

import numpy as np
import pytest
from PIL import Image

import train_textual_inversion as cli
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.formats.embeddings import read_embedding
from test_reliability_runner import logged_losses, start, wait_for_marker

STEPS, STOP_AT = 8, 3


def _dataset(folder):
    os.makedirs(folder)
    rng = np.random.default_rng(7)
    for i in range(3):  # larger than 64x64, so --random_crop picks a window
        Image.fromarray(rng.integers(0, 255, (80, 72, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
            f.write(f"mytoy, red, blue, picture {i}, on a table")


def _options(root, name, seed=True):
    options = ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"),
               "--train_data_dir", str(root / "img"), "--resolution", "64", "--token_string", "mytoy",
               "--init_word", "toy", "--num_vectors_per_token", "2", "--max_train_steps", str(STEPS),
               "--learning_rate", "1e-2", "--lr_scheduler", "cosine", "--flip_aug", "--random_crop",
               "--shuffle_caption", "--keep_tokens", "1", "--output_name", "mytoy",
               "--output_dir", str(root / name), "--logging_dir", str(root / f"logs_{name}")]
    return options + (["--seed", "5"] if seed else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_ti")
    ensure_tiny_checkpoint("tiny-sd15", root / "tiny-sd15.safetensors")
    _dataset(root / "img" / "2_mytoy")  # 3 images x 2 repeats = 6 batches per epoch
    assert cli.main(_options(root, "straight")) == 0

    marker = root / "paused"
    process = start("train_textual_inversion", _options(root, "interrupted"),
                    RELIABILITY_PAUSE_AT_STEP=STOP_AT, RELIABILITY_MARKER=marker)
    wait_for_marker(process, marker)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    interrupted = {"rc": process.returncode, "out": out, "err": err}

    state = root / "interrupted" / f"mytoy-step{STOP_AT:08d}-state"
    resumed_ok = None
    if state.is_dir():  # without --seed: the resumed run takes the interrupted run's seed from the state
        resumed_ok = cli.main(_options(root, "resumed", seed=False) + ["--resume", str(state)])
    return root, interrupted, resumed_ok


def test_ctrl_c_saves_a_resumable_state_and_exits_130(runs):
    root, interrupted, _ = runs
    assert interrupted["rc"] == 130, interrupted
    state = root / "interrupted" / f"mytoy-step{STOP_AT:08d}-state"
    assert f"resumable state saved to {state}" in interrupted["out"]
    assert f"--resume {state}" in interrupted["out"]
    assert "Traceback" not in interrupted["err"] and "Traceback" not in interrupted["out"]
    assert sorted(os.listdir(state)) == ["optimizer.safetensors", "train_state.json", "trainable.safetensors"]
    # nothing else was left behind: no final embedding from an unfinished run, no temp files
    assert sorted(os.listdir(root / "interrupted")) == [state.name]


def test_losses_before_the_interrupt_match_the_uninterrupted_run(runs):
    root, _, _ = runs
    straight, interrupted = logged_losses(root / "logs_straight"), logged_losses(root / "logs_interrupted")
    assert sorted(interrupted) == list(range(1, STOP_AT + 1))
    np.testing.assert_allclose([interrupted[s] for s in interrupted], [straight[s] for s in interrupted],
                               rtol=1e-6)


def test_resumed_run_logs_the_uninterrupted_losses(runs):
    root, _, resumed_ok = runs
    assert resumed_ok == 0
    straight, resumed = logged_losses(root / "logs_straight"), logged_losses(root / "logs_resumed")
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert sorted(resumed) == list(range(STOP_AT + 1, STEPS + 1))  # crosses the epoch boundary after step 6
    np.testing.assert_allclose([resumed[s] for s in resumed], [straight[s] for s in resumed], rtol=1e-6)
    assert len({round(v, 6) for v in straight.values()}) == STEPS  # the losses differ step to step


def test_resumed_embedding_equals_the_uninterrupted_one(runs):
    root, _, resumed_ok = runs
    assert resumed_ok == 0
    straight = read_embedding(str(root / "straight" / "mytoy.safetensors"))
    resumed = read_embedding(str(root / "resumed" / "mytoy.safetensors"))
    np.testing.assert_allclose(resumed.vectors["emb"], straight.vectors["emb"], rtol=1e-6, atol=1e-8)
