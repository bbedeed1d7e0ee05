"""kohya's loss and noise options end to end, one CLI run per family with many of them combined: SD1 LoRA,
SDXL LoRA (v-prediction, conditioning_data_dir masks) and SD1 textual inversion; each finishes with finite
losses and a saved file, and the same SD1 run with --loss_type l2 has another step-1 loss (the option reaches
the loss). Every run compiles a training graph, so there are four."""
import csv
import glob
import logging
import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import train_network
import train_textual_inversion
from library.checkpoints.tiny import ensure_tiny_checkpoint


def _images(folder, count, seed, alpha=False, caption="a photo of mytoy"):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    for i in range(count):
        rgb = np.stack([x, y, 1 - x * y], -1) * 200 + rng.integers(0, 40, (64, 64, 3))
        channels = [rgb]
        if alpha:  # an opaque rectangle on a transparent background
            a = np.zeros((64, 64, 1))
            a[8 + 4 * i:40, 16:56] = 255
            channels.append(a)
        Image.fromarray(np.concatenate(channels, -1).clip(0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i}.png"))
        if caption is not None:
            with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
                f.write(caption)


def _toml(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _losses(logging_dir):
    (csv_path,) = glob.glob(os.path.join(logging_dir, "*", "steps.csv"))
    with open(csv_path, encoding="utf-8") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss_cli")
    for name in ("tiny-sd15", "tiny-sdxl"):
        ensure_tiny_checkpoint(name, root / f"{name}.safetensors")
    _images(root / "alpha", 2, 0, alpha=True)
    _images(root / "plain", 2, 1)
    _images(root / "cond_img", 2, 2)
    _images(root / "cond", 2, 3, caption=None)  # their masks (R channel)
    return root


SD1_LORA_OPTIONS = ["--loss_type", "huber", "--huber_schedule", "snr", "--multires_noise_iterations", "3",
                    "--ip_noise_gamma", "0.1", "--ip_noise_gamma_random_strength", "--noise_offset", "0.05",
                    "--adaptive_noise_scale", "0.01", "--debiased_estimation_loss", "--zero_terminal_snr",
                    "--min_snr_gamma", "5", "--cache_latents"]


def _sd1_lora(root, name, *extra):
    dataset = _toml(root / "sd1.toml", f'''
[general]
resolution = 64
caption_extension = ".txt"
[[datasets]]
network_multiplier = 0.5
  [[datasets.subsets]]
  image_dir = "{root / 'alpha'}"
  alpha_mask = true
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{root / 'plain'}"
''')
    argv = ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"), "--dataset_config", dataset,
            "--network_train_unet_only", "--network_dim", "4", "--network_alpha", "4", "--learning_rate", "1e-3",
            "--seed", "4", "--output_dir", str(root / name), "--output_name", "lora",
            "--logging_dir", str(root / f"{name}_logs"), *extra]
    assert train_network.main(argv) == 0
    return _losses(root / f"{name}_logs")


@pytest.fixture(scope="module")
def sd1_lora(root):
    return _sd1_lora(root, "sd1", *SD1_LORA_OPTIONS, "--max_train_steps", "3")


def test_sd1_lora_with_options_combined(root, sd1_lora):
    assert len(sd1_lora) == 3 and all(math.isfinite(v) for v in sd1_lora)
    with safe_open(str(root / "sd1" / "lora.safetensors"), framework="np") as f:
        meta = f.metadata()
    assert meta["ss_loss_type"] == "huber" and meta["ss_huber_schedule"] == "snr"
    assert meta["ss_huber_c"] == "0.1" and meta["ss_huber_scale"] == "1.0"
    assert meta["ss_multires_noise_iterations"] == "3" and meta["ss_multires_noise_discount"] == "0.3"
    assert meta["ss_ip_noise_gamma"] == "0.1" and meta["ss_ip_noise_gamma_random_strength"] == "True"
    assert meta["ss_adaptive_noise_scale"] == "0.01" and meta["ss_noise_offset"] == "0.05"
    assert meta["ss_debiased_estimation"] == "True" and meta["ss_zero_terminal_snr"] == "True"
    assert meta["ss_min_snr_gamma"] == "5.0"


def test_loss_type_reaches_the_loss(root, sd1_lora):
    """Same seed, data, noise and starting LoRA (lora_up starts at zero): only the loss formula differs."""
    l2 = _sd1_lora(root, "sd1_l2", *SD1_LORA_OPTIONS, "--loss_type", "l2", "--max_train_steps", "1")
    assert len(l2) == 1 and math.isfinite(l2[0])
    assert abs(l2[0] - sd1_lora[0]) > 1e-3 * abs(l2[0]), (l2[0], sd1_lora[0])


def test_sdxl_lora_v_prediction_with_conditioning_masks(root, caplog):
    dataset = _toml(root / "sdxl.toml", f'''
[general]
resolution = 64
caption_extension = ".txt"
[[datasets]]
network_multiplier = 0.7
  [[datasets.subsets]]
  image_dir = "{root / 'cond_img'}"
  conditioning_data_dir = "{root / 'cond'}"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{root / 'plain'}"
''')
    argv = ["--pretrained_model_name_or_path", str(root / "tiny-sdxl.safetensors"), "--v_parameterization",
            "--dataset_config", dataset, "--masked_loss", "--network_train_unet_only", "--network_dim", "4",
            "--learning_rate", "1e-3", "--max_train_steps", "2", "--seed", "2", "--output_dir", str(root / "xl"),
            "--output_name", "xl", "--logging_dir", str(root / "xl_logs"),
            "--loss_type", "smooth_l1", "--huber_schedule", "exponential", "--huber_c", "0.2", "--huber_scale", "1.5",
            "--scale_v_pred_loss_like_noise_pred", "--min_snr_gamma", "5", "--zero_terminal_snr",
            "--noise_offset", "0.05", "--noise_offset_random_strength", "--multires_noise_iterations", "4",
            "--multires_noise_discount", "0.4"]
    with caplog.at_level(logging.INFO):
        assert train_network.main(argv) == 0
    losses = _losses(root / "xl_logs")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert "masked loss: the loss is weighted by the conditioning images" in caplog.text
    assert "dataset network_multiplier" in caplog.text
    with safe_open(str(root / "xl" / "xl.safetensors"), framework="np") as f:
        meta = f.metadata()
    assert meta["ss_loss_type"] == "smooth_l1" and meta["ss_huber_schedule"] == "exponential"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v_parameterization"] == "True"
    datasets = json.loads(meta["ss_datasets"])
    assert datasets[0]["is_dreambooth"] is False and "conditioning_data_dir" in datasets[0]["subsets"][0]


def test_sd1_textual_inversion_with_options_combined(root, caplog):
    dataset = _toml(root / "ti.toml", f'''
[general]
resolution = 64
caption_extension = ".txt"
[[datasets]]
network_multiplier = 0.5
  [[datasets.subsets]]
  image_dir = "{root / 'alpha'}"
  alpha_mask = true
''')
    argv = ["--pretrained_model_name_or_path", str(root / "tiny-sd15.safetensors"), "--dataset_config", dataset,
            "--token_string", "mytoy", "--init_word", "toy", "--learning_rate", "5e-3", "--max_train_steps", "2",
            "--seed", "1", "--output_dir", str(root / "ti"), "--logging_dir", str(root / "ti_logs"),
            "--masked_loss", "--loss_type", "l1", "--ip_noise_gamma", "0.1", "--debiased_estimation_loss",
            "--noise_offset", "0.1", "--adaptive_noise_scale", "0.05", "--multires_noise_iterations", "2",
            "--v_pred_like_loss", "0.1", "--zero_terminal_snr"]
    with caplog.at_level(logging.INFO):
        assert train_textual_inversion.main(argv) == 0
    losses = _losses(root / "ti_logs")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert os.path.isfile(root / "ti" / "mytoy.safetensors")
    assert "network_multiplier is ignored by textual inversion" in caplog.text
    assert "masked loss: the loss is weighted by the alpha channels" in caplog.text
    assert "--zero_terminal_snr without v-parameterization" in caplog.text
