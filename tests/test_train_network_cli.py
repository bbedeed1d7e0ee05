"""train_network.py end to end on the tiny SD1 checkpoint: DreamBooth with a reg folder filled by class-image
generation, kohya files + metadata, a resumed run that continues identically, --network_weights round trips.

Each CLI run compiles a training graph (the slow part on a CPU), so the runs are shared by the checks.
"""
import glob
import os

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import train_network as cli
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.formats.lora import read_lora_file
from library.models.bundle import build_bundle
from library.training import session


def _images(folder, count, seed):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    for i in range(count):
        base = np.stack([x, y, 1 - x * y], -1) * 200 + rng.integers(0, 40, (64, 64, 3))
        Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))


def _common(root, output_dir):
    return ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"),
            "--train_data_dir", str(root / "img"), "--reg_data_dir", str(root / "reg"), "--resolution", "64",
            "--class_prompt", "a photo of a dog", "--num_class_images", "2", "--class_sample_steps", "1",
            "--network_train_unet_only", "--network_dim", "4", "--network_alpha", "4", "--learning_rate", "5e-3",
            "--prior_loss_weight", "0.5", "--max_train_steps", "8", "--save_every_n_steps", "4", "--save_state",
            "--output_dir", str(output_dir), "--output_name", "dog", "--seed", "3", "--training_comment", "hi",
            "--min_timestep", "900", "--max_timestep", "1000", "--cache_latents_to_disk"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_cli")
    ensure_tiny_checkpoint("tiny-sd15", root / "tiny-sd15.safetensors")
    _images(root / "img" / "4_sks dog", 2, seed=0)
    os.makedirs(root / "reg" / "1_dog")
    assert cli.main(_common(root, root / "a") + ["--logging_dir", str(root / "logs")]) == 0
    generated = _class_files(root)
    state = root / "a" / "dog-step00000004-state"
    assert cli.main(_common(root, root / "b") + ["--resume", str(state)]) == 0
    return root, generated


def _class_files(root):
    return sorted(p for p in glob.glob(str(root / "reg" / "1_dog" / "*")) if p.endswith((".png", ".caption")))


def _tensors(path):
    return read_lora_file(str(path))[0]


def test_class_images_generated_once_and_files_written(runs):
    root, generated = runs
    names = sorted(os.path.basename(p) for p in generated)
    assert names == ["class_00000.caption", "class_00000.png", "class_00001.caption", "class_00001.png"]
    with open(root / "reg" / "1_dog" / "class_00000.caption", encoding="utf-8") as f:
        assert f.read().strip() == "a photo of a dog"
    # the resumed run found enough class images and generated none
    assert _class_files(root) == generated
    assert Image.open(generated[1]).size == (64, 64)

    for name in ("dog-step00000004.safetensors", "dog.safetensors", "dog-step00000004-state"):
        assert os.path.exists(root / "a" / name)
    with safe_open(str(root / "a" / "dog.safetensors"), framework="np") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_prior_loss_weight"] == "0.5" and meta["ss_training_comment"] == "hi"
    assert meta["ss_num_train_images"] == "8" and meta["ss_num_reg_images"] == "2"
    assert meta["ss_steps"] == "8" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8
    # folder mode, as kohya: reg folders in ss_reg_dataset_dirs, not merged into ss_dataset_dirs
    assert "4_sks dog" in meta["ss_dataset_dirs"] and "1_dog" in meta["ss_reg_dataset_dirs"]
    assert "sks dog" in meta["ss_tag_frequency"] and "ss_network_args" not in meta


def test_trained_lora_lowers_the_loss(runs):
    """Same latents, noise and timesteps (the training range): the objective with the trained LoRA is lower
    than with the LoRA switched off (multiplier 0, changed in the compiled graph without recompiling)."""
    from library.networks.training import LoRATraining
    from library.text.chunking import make_tokenize_fn

    root, _ = runs
    parser = session.build_parser("test", True, cli.add_network_arguments)
    args = parser.parse_args(["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"),
                              "--network_weights", str(root / "a" / "dog.safetensors"), "--network_train_unet_only",
                              "--network_dim", "4", "--network_alpha", "4", "--seed", "1"])
    bundle = session.load_model(args)
    method = LoRATraining(args, bundle)
    cached = sorted(glob.glob(str(root / "img" / "4_sks dog" / "*_sd.npz")))
    assert len(cached) == 2
    latents = np.stack([np.load(p)["latents"] for p in cached] * 2) * bundle.spec.vae_scaling_factor
    rng = np.random.default_rng(7)
    batch = {"input_ids": make_tokenize_fn(bundle.tokenizers)(["sks dog"] * 4),
             "loss_weights": np.ones(4, np.float32)}
    inputs = method.step_inputs(batch, latents.astype(np.float32), rng.standard_normal(latents.shape).astype(
        np.float32), rng.integers(900, 1000, 4))
    method.objective.set_train(False)
    trained = float(method.objective(*inputs).asnumpy())
    method.network.set_multiplier(0.0)
    untrained = float(method.objective(*inputs).asnumpy())
    assert trained < untrained, (trained, untrained)


def test_resumed_run_continues_identically(runs):
    root, _ = runs
    uninterrupted, resumed = _tensors(root / "a" / "dog.safetensors"), _tensors(root / "b" / "dog.safetensors")
    midway = _tensors(root / "a" / "dog-step00000004.safetensors")
    assert set(uninterrupted) == set(resumed)
    for key in uninterrupted:
        np.testing.assert_allclose(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-7)
    assert any(not np.array_equal(midway[k], uninterrupted[k]) for k in midway), "training after step 4 changed"


def _method(extra):
    from library.networks.training import LoRATraining

    parser = session.build_parser("test", True, cli.add_network_arguments)
    args = parser.parse_args(["--seed", "1", *extra])
    return LoRATraining(args, build_bundle("tiny-sd15"))


def test_network_weights_round_trip(runs):
    root, _ = runs
    path = root / "a" / "dog.safetensors"
    saved = _tensors(path)
    method = _method(["--network_weights", str(path), "--network_dim", "4", "--network_alpha", "4"])
    state = method.network.state_dict()
    assert all(k.startswith("lora_te_") for k in set(state) - set(saved))  # TE modules are new (not in file)
    for key, value in saved.items():
        np.testing.assert_array_equal(state[key], value)
    # --dim_from_weights rebuilds exactly the file's modules, whatever --network_dim says
    from_file = _method(["--network_weights", str(path), "--dim_from_weights", "--network_dim", "16"])
    assert set(from_file.network.state_dict()) == set(saved)
    assert all(m.rank == 4 for m in from_file.network.modules)
