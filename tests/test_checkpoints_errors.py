"""Bad checkpoints end in one UserError naming the file and what is wrong (never a traceback), pickles are
read only with consent, and `vae=` replaces the VAE."""
import os

import numpy as np
import pytest
import torch

from library.checkpoints import ensure_tiny_checkpoint, load_model
from library.checkpoints.layout import VAE_PREFIX, split_single_file
from library.checkpoints.vae_keys import ldm_to_diffusers_vae
from library.errors import UserError, run_cli
from library.formats.safetensors_io import read_safetensors, write_safetensors
from library.models.weights import state_dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    path = ensure_tiny_checkpoint("tiny-sd15", str(folder / "tiny.safetensors"), seed=4)
    tensors, metadata = read_safetensors(path)
    return folder, path, tensors, metadata


def _rewrite(folder, name, tensors, metadata=None):
    path = str(folder / name)
    write_safetensors(path, tensors, metadata)
    return path


def test_missing_path_and_hub_ids():
    with pytest.raises(UserError, match=r"checkpoint /nonexistent/model\.safetensors does not exist"):
        load_model("/nonexistent/model.safetensors")
    with pytest.raises(UserError, match="Hugging Face Hub is not supported"):
        load_model("stabilityai/stable-diffusion-2-1")


def test_truncated_and_empty_files(tiny):
    folder, path, _, _ = tiny
    data = open(path, "rb").read()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"truncated\.safetensors is not a valid \.safetensors file"):
        load_model(str(truncated))
    empty = folder / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.safetensors .*truncated or empty"):
        load_model(str(empty))


def test_cli_prints_one_message_without_traceback(tiny, capsys):
    folder = tiny[0]
    (folder / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda argv: load_model(str(folder / "junk.safetensors")), argv=[])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.safetensors" in err and "Traceback" not in err


def test_unknown_layouts(tiny):
    folder = tiny[0]
    lora_like = _rewrite(folder, "lora.safetensors", {"lora_unet_x.lora_down.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(UserError, match="cannot tell which model family .*lora.safetensors"):
        load_model(lora_like)
    (folder / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(UserError, match=r"model\.onnx: unknown checkpoint format; expected a \.safetensors"):
        load_model(str(folder / "model.onnx"))
    (folder / "not_diffusers").mkdir()
    with pytest.raises(UserError, match="not_diffusers is a folder but not a diffusers model folder"):
        load_model(str(folder / "not_diffusers"))


def test_missing_unexpected_and_mismatched_keys_are_named(tiny):
    folder, _, tensors, metadata = tiny
    damaged = dict(tensors)
    del damaged["model.diffusion_model.out.2.bias"]
    del damaged[VAE_PREFIX + "decoder.conv_out.weight"]
    damaged["model.diffusion_model.input_blocks.1.0.stray.weight"] = np.zeros(2, np.float32)
    damaged["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = np.ones(5, np.float32)
    damaged["lora_te_text_model.alpha"] = np.ones((), np.float32)
    with pytest.raises(UserError) as info:
        load_model(_rewrite(folder, "damaged.safetensors", damaged, metadata))
    message = str(info.value)
    assert "damaged.safetensors does not fit the tiny-sd15 (sd1) model" in message
    assert "UNet: 1 missing key(s), e.g. conv_out.bias (model.diffusion_model.out.2.bias)" in message
    assert "VAE: 1 missing key(s), e.g. decoder.conv_out.weight" in message
    assert "text encoder 1: 1 shape mismatch(es), e.g. text_model.final_layer_norm.weight: file (5,)" in message
    assert ("UNet: 1 unexpected key(s), e.g. down_blocks.0.resnets.0.stray.weight "
            "(model.diffusion_model.input_blocks.1.0.stray.weight)") in message
    assert "1 unexpected key(s) in the file, e.g. lora_te_text_model.alpha" in message


def test_wrong_family_options(tiny):
    _, path, _, _ = tiny
    with pytest.raises(UserError, match=r"--sdxl was given but .*tiny\.safetensors is an SD1\.x checkpoint"):
        load_model(path, sdxl=True)
    with pytest.raises(UserError, match="--v2 was given"):
        load_model(path, v2=True)
    with pytest.raises(UserError, match=r"--model_config tiny-sdxl describes an SDXL model"):
        load_model(path, model_config="tiny-sdxl")


def test_pickles_need_consent_and_then_load(tiny):
    folder, path, tensors, _ = tiny
    ckpt = str(folder / "model.ckpt")
    torch.save({"state_dict": {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, "global_step": 7}, ckpt)
    with pytest.raises(UserError) as info:
        load_model(ckpt)
    message = str(info.value)
    assert "model.ckpt is a pickle file" in message and "--allow_unsafe_pickle" in message
    assert "safetensors" in message
    from_pickle = load_model(ckpt, allow_pickle=True)
    expected, _, _ = split_single_file(tensors, from_pickle.spec)
    got = state_dict(from_pickle.unet)
    assert set(got) == set(expected["unet"]) and all(np.array_equal(got[k], expected["unet"][k]) for k in got)


def test_pickled_diffusers_weights_need_consent(tiny):
    folder = tiny[0]
    diffusers = folder / "pickled_diffusers"
    for part in ("unet", "vae", "text_encoder"):
        (diffusers / part).mkdir(parents=True)
        (diffusers / part / "config.json").write_text("{}")
    (diffusers / "model_index.json").write_text("{}")
    (diffusers / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    (diffusers / "text_encoder" / "config.json").write_text(
        '{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}')
    (diffusers / "unet" / "config.json").write_text('{"block_out_channels": [32]}')
    (diffusers / "vae" / "config.json").write_text('{"block_out_channels": [32]}')
    with pytest.raises(UserError, match=r"diffusion_pytorch_model\.bin is a pickle file.*--allow_unsafe_pickle"):
        load_model(str(diffusers))


def test_vae_option_replaces_the_vae(tiny):
    folder, path, _, _ = tiny
    other = ensure_tiny_checkpoint("tiny-sd15", str(folder / "other.safetensors"), seed=99)
    other_tensors, _ = read_safetensors(other)
    vae_only = {k[len(VAE_PREFIX):]: v for k, v in other_tensors.items() if k.startswith(VAE_PREFIX)}
    vae_file = _rewrite(folder, "vae.safetensors", vae_only)  # a bare LDM VAE file, as VAEs are shipped
    bundle = load_model(path, vae=vae_file)
    conv = state_dict(bundle.vae)["decoder.conv_out.weight"]
    assert np.array_equal(conv, other_tensors[VAE_PREFIX + "decoder.conv_out.weight"])
    # a diffusers VAE folder from before diffusers 0.17 (attention named query/key/value/proj_attn)
    diffusers_names, _ = ldm_to_diffusers_vae(vae_only, bundle.spec.vae)
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v
              for k, v in diffusers_names.items()}
    assert any(".query." in k for k in legacy)
    vae_folder = folder / "vae_folder"
    vae_folder.mkdir()
    (vae_folder / "config.json").write_text("{}")
    _rewrite(vae_folder, "diffusion_pytorch_model.safetensors", legacy)
    from_folder = state_dict(load_model(path, vae=str(vae_folder)).vae)
    assert np.array_equal(from_folder["decoder.mid_block.attentions.0.to_q.weight"],
                          diffusers_names["decoder.mid_block.attentions.0.to_q.weight"])
    with pytest.raises(UserError, match=r"--vae .*tiny\.safetensors: not a VAE checkpoint"):
        load_model(path, vae=path)
    assert os.path.isfile(path)
