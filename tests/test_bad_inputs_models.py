"""Bad checkpoints, malformed safetensors headers, pickles without consent, embeddings and LoRA files that do
not fit, bad textual-inversion options: one message, exit 2, no traceback, nothing saved (in-process)."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

import train_network
import train_textual_inversion
from bad_inputs_helpers import dataset_toml, expect_failure, write_images
from library.checkpoints import ensure_tiny_checkpoint
from library.formats.embeddings import save_embedding
from library.formats.lora import save_lora
from library.models.bundle import build_bundle
from library.models.configs import get_spec
from library.networks import create_network


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    images = str(root / "images")
    write_images(images, caption="a photo of mytoy")
    return dict(root=root, sd15=ensure_tiny_checkpoint("tiny-sd15", str(root / "tiny-sd15.safetensors")),
                sdxl=ensure_tiny_checkpoint("tiny-sdxl", str(root / "tiny-sdxl.safetensors")),
                config=dataset_toml(root / "dataset.toml", images))


def ti(env, tmp_path, capfd, names, *extra, ckpt=None):
    out = str(tmp_path / "out")
    argv = ["--pretrained_model_name_or_path", ckpt or env["sd15"], "--dataset_config", env["config"],
            "--token_string", "mytoy", "--init_word", "toy", "--output_dir", out, "--max_train_steps", "1", *extra]
    return expect_failure(train_textual_inversion, argv, capfd, names, out)


def lora(env, tmp_path, capfd, names, *extra, ckpt=None):
    out = str(tmp_path / "out")
    argv = ["--pretrained_model_name_or_path", ckpt or env["sd15"], "--dataset_config", env["config"],
            "--output_dir", out, "--max_train_steps", "1", *extra]
    return expect_failure(train_network, argv, capfd, names, out)


def raw_safetensors(path, header, data):
    """A safetensors file written byte by byte (whatever the header says)."""
    raw = json.dumps(header).encode("utf-8") if isinstance(header, dict) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


def width(spec_name, index=0):
    return get_spec(spec_name).text_encoders[index]["hidden_size"]


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_path_missing(env, tmp_path, capfd):
    missing = str(tmp_path / "nope.safetensors")
    ti(env, tmp_path, capfd, ["--pretrained_model_name_or_path", missing, "no such file"], ckpt=missing)


def test_checkpoint_truncated(env, tmp_path, capfd):
    data = open(env["sd15"], "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) * 2 // 3])
    lora(env, tmp_path, capfd, [str(cut), "not a valid .safetensors file", "truncated"], ckpt=str(cut))


def test_checkpoint_of_an_unknown_layout(env, tmp_path, capfd):
    other = str(tmp_path / "classifier.safetensors")
    save_lora(other, {"lora_unet_x.lora_down.weight": np.zeros((2, 4), np.float32),
                      "lora_unet_x.lora_up.weight": np.zeros((4, 2), np.float32)})
    ti(env, tmp_path, capfd, [other, "cannot tell which model family"], ckpt=other)


def test_ckpt_is_not_unpickled_without_consent(env, tmp_path, capfd):
    marker = tmp_path / "pwned"

    class Payload:  # unpickling this creates `marker`: proof that code ran
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Payload()}))
    lora(env, tmp_path, capfd, [str(ckpt), "pickle", "--allow_unsafe_pickle"], ckpt=str(ckpt))
    assert not marker.exists()
    # with consent torch's restricted loader still refuses to run the payload
    lora(env, tmp_path, capfd, [str(ckpt), "weights_only"], "--allow_unsafe_pickle", ckpt=str(ckpt))
    assert not marker.exists()


# ---------------------------------------------------------------- malformed safetensors headers

def test_safetensors_header_not_json(env, tmp_path, capfd):
    bad = raw_safetensors(tmp_path / "bad_json.safetensors", b'{"w": {"dtype": "F32", ', b"")
    ti(env, tmp_path, capfd, [bad, "not a valid .safetensors file", "not JSON"], ckpt=bad)


def test_safetensors_offsets_past_the_end(env, tmp_path, capfd):
    bad = raw_safetensors(tmp_path / "emb.safetensors",
                          {"emb_params": {"dtype": "F32", "shape": [1, 32], "data_offsets": [0, 128]}}, b"\0" * 64)
    ti(env, tmp_path, capfd, [bad, "emb_params", "outside the 64-byte data region"], "--weights", bad)


def test_safetensors_unknown_dtype(env, tmp_path, capfd):
    bad = raw_safetensors(tmp_path / "dtype.safetensors",
                          {"lora_unet_x.alpha": {"dtype": "F7", "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4)
    lora(env, tmp_path, capfd, [bad, "unsupported dtype 'F7'"], "--network_weights", bad)


def test_safetensors_size_does_not_match_shape(env, tmp_path, capfd):
    bad = raw_safetensors(tmp_path / "size.safetensors",
                          {"w": {"dtype": "F16", "shape": [3, 4], "data_offsets": [0, 48]}}, b"\0" * 48)
    lora(env, tmp_path, capfd, [bad, "'w' has 48 bytes but F16 [3, 4] needs 24"], "--base_weights", bad)


# ---------------------------------------------------------------- textual inversion options and --weights

def test_token_string_already_in_the_vocabulary(env, tmp_path, capfd):
    ti(env, tmp_path, capfd, ["--token_string", "'cat'", "already has"], "--token_string", "cat")


def test_init_word_that_is_not_a_vocabulary_word(env, tmp_path, capfd):
    ti(env, tmp_path, capfd, ["--init_word 'mytoy1'", "newly added tokens"], "--init_word", "mytoy1",
       "--num_vectors_per_token", "2")


def test_empty_init_word(env, tmp_path, capfd):
    ti(env, tmp_path, capfd, ["--init_word", "empty"], "--init_word", " ")


def test_zero_vectors_per_token(env, tmp_path, capfd):
    ti(env, tmp_path, capfd, ["--num_vectors_per_token", ">= 1", "got 0"], "--num_vectors_per_token", "0")


def test_sd1_embedding_into_sdxl(env, tmp_path, capfd):
    sd1 = str(tmp_path / "sd1.safetensors")
    save_embedding(sd1, "sd1", [np.ones((1, width("tiny-sd15")), np.float32)], "sd1")
    ti(env, tmp_path, capfd, ["--weights", sd1], "--weights", sd1, ckpt=env["sdxl"])


def test_sdxl_embedding_into_sd1(env, tmp_path, capfd):
    xl = str(tmp_path / "xl.safetensors")
    save_embedding(xl, "sdxl", [np.ones((1, width("tiny-sdxl", 0)), np.float32),
                                np.ones((1, width("tiny-sdxl", 1)), np.float32)], "xl")
    ti(env, tmp_path, capfd, ["--weights", xl], "--weights", xl)


def test_embedding_with_other_vector_count(env, tmp_path, capfd):
    three = str(tmp_path / "three.safetensors")
    save_embedding(three, "sd1", [np.ones((3, width("tiny-sd15")), np.float32)], "three")
    ti(env, tmp_path, capfd, ["--weights", three, "3"], "--weights", three, "--num_vectors_per_token", "2")


# ---------------------------------------------------------------- LoRA files in train_network

def test_network_weights_with_stray_keys(env, tmp_path, capfd):
    stray = str(tmp_path / "stray.safetensors")
    save_lora(stray, {"lora_unet_not_a_layer.lora_down.weight": np.zeros((2, 8), np.float32),
                      "lora_unet_not_a_layer.lora_up.weight": np.zeros((8, 2), np.float32)})
    lora(env, tmp_path, capfd, ["--network_weights", stray, "lora_unet_not_a_layer"], "--network_weights", stray)


def test_network_weights_with_some_stray_keys(env, tmp_path, capfd):
    network = create_network(build_bundle("tiny-sd15", with_tokenizers=False), network_dim=4)
    tensors = dict(network.state_dict())
    tensors["lora_te_text_model_typo_layer.lora_down.weight"] = np.zeros((4, 32), np.float32)
    tensors["lora_te_text_model_typo_layer.lora_up.weight"] = np.zeros((32, 4), np.float32)
    mixed = str(tmp_path / "mixed.safetensors")
    save_lora(mixed, tensors)
    lora(env, tmp_path, capfd, ["--network_weights", mixed, "lora_te_text_model_typo_layer"],
         "--network_weights", mixed, "--network_dim", "4")


def test_network_weights_of_another_family(env, tmp_path, capfd):
    xl = str(tmp_path / "xl_lora.safetensors")
    save_lora(xl, {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((2, 32), np.float32),
                   "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": np.zeros((64, 2), np.float32)})
    lora(env, tmp_path, capfd, ["--network_weights", xl, "lora_te2"], "--network_weights", xl,
         "--dim_from_weights")


def test_output_dir_not_writable(env, tmp_path, capfd):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    argv = ["--pretrained_model_name_or_path", env["sd15"], "--dataset_config", env["config"],
            "--output_dir", out, "--max_train_steps", "1"]
    expect_failure(train_network, argv, capfd, ["--output_dir", out, "cannot create"], out)


def test_pickled_lora_is_not_unpickled_without_consent(env, tmp_path, capfd):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "lora.pt"
    evil.write_bytes(pickle.dumps({"lora_unet_x.alpha": Payload()}))
    lora(env, tmp_path, capfd, [str(evil), "--allow_unsafe_pickle"], "--network_weights", str(evil))
    assert not marker.exists()


def test_resume_folder_missing(env, tmp_path, capfd):
    gone = str(tmp_path / "last-state")
    lora(env, tmp_path, capfd, ["--resume", gone, "not a state folder"], "--resume", gone)


def test_resume_folder_without_a_state(env, tmp_path, capfd):
    empty = tmp_path / "empty-state"
    empty.mkdir()
    ti(env, tmp_path, capfd, ["--resume", str(empty), "missing"], "--resume", str(empty))


def test_sample_prompt_of_a_size_the_model_cannot_take(env, tmp_path, capfd):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a toy --w 64 --h 64\na toy on a table --w 72 --h 64\n")
    lora(env, tmp_path, capfd, ["--sample_prompts", str(prompts), "a toy on a table", "72x64"],
         "--sample_prompts", str(prompts), "--sample_every_n_steps", "1")


def test_sample_prompt_with_an_unknown_sampler(env, tmp_path, capfd):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a toy --ss warp_drive\n")
    ti(env, tmp_path, capfd, ["--sample_prompts", str(prompts), "warp_drive"], "--sample_prompts", str(prompts))
