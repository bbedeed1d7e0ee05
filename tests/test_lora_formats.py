"""LoRA files: kohya keys only, 0-dim alpha, save precision, metadata, kohya's sshs hashes, reading other layouts."""
import hashlib
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from library.errors import UserError
from library.formats.lora import (checkpoint_hashes, file_addnet_hash, lora_hashes, lora_metadata, lora_modelspec,
                                  read_lora_file, save_lora)


def _kohya_tensors(rng, modules=3, rank=4, width=300):
    tensors = {}
    for i in range(modules):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn{i}_to_q"
        tensors[name + ".lora_down.weight"] = rng.standard_normal((rank, width)).astype(np.float32)
        tensors[name + ".lora_up.weight"] = rng.standard_normal((width, rank)).astype(np.float32)
        tensors[name + ".alpha"] = np.array(rank / 2, dtype=np.float32)
    return tensors


@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_save_writes_kohya_file_with_hashes(tmp_path, precision):
    rng = np.random.default_rng(0)
    tensors = _kohya_tensors(rng, modules=300)  # > 1 MiB so the legacy hash reads real data
    metadata = lora_metadata({"network_dim": 4, "ss_network_alpha": 2.0, "network_module": "networks.lora",
                              "network_args": {"conv_dim": 4}, "v2": False, "tag_frequency": {"a": {"b": 1}}})
    metadata.update(lora_modelspec("sd1", title="t", resolution=512))
    path = tmp_path / "x.safetensors"
    written = save_lora(path, tensors, metadata, save_precision=precision)

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        file_meta = f.metadata()
        alpha = f.get_tensor(next(iter(k for k in keys if k.endswith(".alpha"))))
        down = f.get_tensor(next(iter(k for k in keys if k.endswith("down.weight"))))
    assert keys == set(tensors)
    assert alpha.shape == torch.Size([])
    expected_dtype = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert down.dtype == expected_dtype and alpha.dtype == expected_dtype
    assert file_meta == written
    assert file_meta["ss_network_dim"] == "4" and json.loads(file_meta["ss_network_args"]) == {"conv_dim": 4}
    assert file_meta["ss_v2"] == "False" and file_meta["modelspec.architecture"] == "stable-diffusion-v1/lora"

    cast = {k: torch.from_numpy(v).to(expected_dtype) for k, v in tensors.items()}
    reference = _kohya_reference_hashes(cast, metadata)
    assert (file_meta["sshs_model_hash"], file_meta["sshs_legacy_hash"]) == reference
    assert reference[1] != hashlib.sha256(b"").hexdigest()[:8]
    # A1111 hashes the data region of the file itself: the same value, whatever the metadata
    assert file_addnet_hash(str(path)) == file_meta["sshs_model_hash"]


def _kohya_reference_hashes(cast, metadata):
    """kohya train_util.precalculate_safetensors_hashes, re-stated with torch + the reference safetensors."""
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    raw = safetensors.torch.save(cast, ss_only)
    header_len = int.from_bytes(raw[:8], "little")
    return hashlib.sha256(raw[8 + header_len:]).hexdigest(), hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]


def test_hashes_ignore_non_training_metadata_and_change_with_weights():
    rng = np.random.default_rng(1)
    tensors = _kohya_tensors(rng)
    a = lora_hashes(tensors, {"ss_x": "1"})
    assert a == lora_hashes(tensors, {"ss_x": "1", "modelspec.title": "other"})
    tensors[next(iter(tensors))][0, 0] += 1
    assert lora_hashes(tensors, {"ss_x": "1"})[0] != a[0]


def test_minimal_metadata_keeps_kohya_set():
    meta = lora_metadata({"network_dim": 8, "learning_rate": 1e-4, "v2": True, "base_model_version": "sd_v2"},
                         minimal=True)
    assert meta == {"ss_network_dim": "8", "ss_v2": "True", "ss_base_model_version": "sd_v2"}
    assert lora_modelspec("sdxl", title="x")["modelspec.implementation"].startswith("https://github.com/Stability")


def test_pt_roundtrip_and_pickle_needs_consent(tmp_path):
    rng = np.random.default_rng(2)
    tensors = _kohya_tensors(rng, modules=1)
    path = tmp_path / "x.pt"
    save_lora(path, tensors)
    loaded = torch.load(str(path), weights_only=True)
    assert set(loaded) == set(tensors) and loaded[next(k for k in tensors if k.endswith(".alpha"))].shape == ()
    with pytest.raises(UserError, match="pickle"):
        read_lora_file(path)
    read, _ = read_lora_file(path, allow_pickle=True)
    for key in tensors:
        np.testing.assert_array_equal(read[key], tensors[key])


def _write(tmp_path, name, tensors, metadata=None):
    path = tmp_path / name
    safetensors.torch.save_file({k: torch.tensor(v) for k, v in tensors.items()}, str(path), metadata)
    return path


def test_reads_peft_and_diffusers_layouts(tmp_path):
    down, up = np.ones((2, 8), np.float32), np.ones((8, 2), np.float32)
    peft = _write(tmp_path, "peft.safetensors", {"lora_unet_mid_block_attentions_0_proj_in.lora_A.weight": down,
                                                  "lora_unet_mid_block_attentions_0_proj_in.lora_B.weight": up})
    tensors, _ = read_lora_file(peft)
    assert set(tensors) == {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
                            "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"}
    diffusers_file = _write(tmp_path, "d.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight": down,
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight": up,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": down,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": up,
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": down,
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": up,
    }, {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 1, "unet.r": 2})})
    tensors, _ = read_lora_file(diffusers_file)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in tensors
    assert float(tensors["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"]) == 1.0
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in tensors
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight" in tensors
    old = _write(tmp_path, "old.safetensors", {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": down,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": up})
    tensors, _ = read_lora_file(old)
    assert set(tensors) == {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
                            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"}


def test_clear_errors_for_bad_files(tmp_path):
    down, up = np.ones((2, 8), np.float32), np.ones((8, 2), np.float32)
    stray = _write(tmp_path, "stray.safetensors", {"lora_te_a.lora_down.weight": down, "lora_te_a.lora_up.weight": up,
                                                    "model.diffusion_model.x.weight": up, "emb": down})
    with pytest.raises(UserError, match=r"2 key\(s\) that are not LoRA weights.*emb, model.diffusion_model.x"):
        read_lora_file(stray)
    loha = _write(tmp_path, "loha.safetensors", {"lora_unet_a.hada_w1_a": down})
    with pytest.raises(UserError, match="LoHa"):
        read_lora_file(loha)
    unpaired = _write(tmp_path, "unpaired.safetensors", {"lora_te_a.lora_down.weight": down})
    with pytest.raises(UserError, match="lack their lora_down or lora_up"):
        read_lora_file(unpaired)
    with pytest.raises(UserError, match="does not exist"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_checkpoint_hashes(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, 0x120000, dtype=np.uint8).tobytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    legacy, full = checkpoint_hashes(path)
    assert legacy == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert full == hashlib.sha256(data).hexdigest()
    assert checkpoint_hashes(tmp_path) == ("IsADirectory", "IsADirectory")
    assert checkpoint_hashes(tmp_path / "nope") == ("NOFILE", "NOFILE")
