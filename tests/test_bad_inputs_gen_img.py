"""gen_img with bad options and files: one message naming the option / file, exit 2, no traceback, no image
written. In-process; every case fails before the first denoising step."""
import pickle

import numpy as np
import pytest

import gen_img
from bad_inputs_helpers import expect_failure, write_text
from library.checkpoints import ensure_tiny_checkpoint
from library.formats.embeddings import save_embedding
from library.formats.lora import save_lora
from library.models.bundle import build_bundle
from library.models.configs import get_spec
from library.networks import create_network


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return ensure_tiny_checkpoint("tiny-sd15", str(tmp_path_factory.mktemp("gen") / "tiny-sd15.safetensors"))


def fail(ckpt, tmp_path, capfd, names, *extra, prompt=("--prompt", "a photo of a toy")):
    out = str(tmp_path / "images")
    argv = ["--ckpt", ckpt, "--outdir", out, "--steps", "2", *prompt, *extra]
    return expect_failure(gen_img, argv, capfd, names, out)


def test_unknown_sampler(ckpt, tmp_path, capfd):
    fail(ckpt, tmp_path, capfd, ["sampler", "nope", "euler"], "--sampler", "nope")


def test_negative_steps(ckpt, tmp_path, capfd):
    fail(ckpt, tmp_path, capfd, ["--steps", ">= 1", "-3"], "--steps", "-3")


def test_size_the_model_cannot_take(ckpt, tmp_path, capfd):
    multiple = 2 ** (len(get_spec("tiny-sd15").unet["block_out_channels"]) - 1) * 8
    fail(ckpt, tmp_path, capfd, ["--W", "72", str(multiple)], "--W", "72", "--H", "64")


def test_outdir_not_writable(ckpt, tmp_path, capfd):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    out = str(blocker / "images")
    argv = ["--ckpt", ckpt, "--outdir", out, "--prompt", "a toy", "--steps", "2"]
    expect_failure(gen_img, argv, capfd, ["--outdir", out], out)


def test_lora_whose_keys_fit_nothing(ckpt, tmp_path, capfd):
    stray = str(tmp_path / "stray.safetensors")
    save_lora(stray, {"lora_unet_no_such_block.lora_down.weight": np.zeros((2, 4), np.float32),
                      "lora_unet_no_such_block.lora_up.weight": np.zeros((4, 2), np.float32)})
    fail(ckpt, tmp_path, capfd, [stray, "lora_unet_no_such_block"], "--network_module", "networks.lora",
         "--network_weights", stray)


def test_lora_with_some_stray_keys(ckpt, tmp_path, capfd):
    network = create_network(build_bundle("tiny-sd15", with_tokenizers=False), network_dim=2)
    tensors = dict(network.state_dict())  # a valid file for this model ...
    tensors["lora_unet_mid_block_not_here.lora_down.weight"] = np.zeros((2, 8), np.float32)  # ... plus one stray
    tensors["lora_unet_mid_block_not_here.lora_up.weight"] = np.zeros((8, 2), np.float32)
    mixed = str(tmp_path / "mixed.safetensors")
    save_lora(mixed, tensors)
    fail(ckpt, tmp_path, capfd, [mixed, "1 module(s)", "lora_unet_mid_block_not_here"], "--network_weights", mixed)


def test_lora_for_another_family(ckpt, tmp_path, capfd):
    xl = str(tmp_path / "xl.safetensors")
    save_lora(xl, {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((2, 32), np.float32),
                   "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": np.zeros((64, 2), np.float32)})
    fail(ckpt, tmp_path, capfd, [xl, "SDXL"], "--network_module", "networks.lora", "--network_weights", xl)


def test_unsupported_network_module(ckpt, tmp_path, capfd):
    fail(ckpt, tmp_path, capfd, ["--network_module", "networks.dylora"], "--network_module", "networks.dylora",
         "--network_weights", str(tmp_path / "x.safetensors"))


def test_embedding_of_another_width(ckpt, tmp_path, capfd):
    wide = str(tmp_path / "wide.safetensors")
    save_embedding(wide, "sd2", [np.ones((1, 1024), np.float32)], "wide")
    fail(ckpt, tmp_path, capfd, ["wide", "1024"], "--textual_inversion_embeddings", wide)


def test_pickled_embedding_without_consent(ckpt, tmp_path, capfd):
    pt = tmp_path / "old.pt"
    pt.write_bytes(pickle.dumps({"string_to_param": {"*": [0.0]}}))
    fail(ckpt, tmp_path, capfd, [str(pt), "--allow_unsafe_pickle"], "--textual_inversion_embeddings", str(pt))


def test_prompt_file_missing(ckpt, tmp_path, capfd):
    missing = str(tmp_path / "prompts.txt")
    fail(ckpt, tmp_path, capfd, ["prompt file", missing], prompt=("--from_file", missing))


def test_prompt_file_with_a_bad_option(ckpt, tmp_path, capfd):
    prompts = write_text(tmp_path / "prompts.txt", "a cat --l 1.2.3\n")
    fail(ckpt, tmp_path, capfd, [prompts, "--l 1.2.3", "a cat"], prompt=("--from_file", prompts))


def test_prompt_file_with_a_size_the_model_cannot_take(ckpt, tmp_path, capfd):
    prompts = write_text(tmp_path / "prompts.txt", "a cat --w 64 --h 88\n")
    fail(ckpt, tmp_path, capfd, ["88", "a cat"], prompt=("--from_file", prompts))


def test_vae_that_is_not_a_vae(ckpt, tmp_path, capfd):
    not_vae = str(tmp_path / "notvae.safetensors")
    save_lora(not_vae, {"lora_unet_x.lora_down.weight": np.zeros((2, 4), np.float32),
                        "lora_unet_x.lora_up.weight": np.zeros((4, 2), np.float32)})
    fail(ckpt, tmp_path, capfd, ["--vae", not_vae, "not a VAE"], "--vae", not_vae)


def test_prompt_file_that_is_not_utf8(ckpt, tmp_path, capfd):
    prompts = tmp_path / "latin.txt"
    prompts.write_bytes("a caf\u00e9 on a table\n".encode("latin-1"))
    fail(ckpt, tmp_path, capfd, [str(prompts), "not UTF-8"], prompt=("--from_file", str(prompts)))
