"""Textual-inversion embedding files: every layout A1111 accepts is read; what we write loads in torch,
safetensors and diffusers' `load_textual_inversion`."""
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers.loaders import TextualInversionLoaderMixin
from transformers import CLIPTextConfig, CLIPTextModel

from library.errors import UserError
from library.formats.embeddings import (check_embedding_fits, modelspec_metadata, read_embedding, save_embedding,
                                        save_embedding_pt, save_embedding_safetensors)
from library.text.tokenizer import load_clip_tokenizer

RNG = np.random.default_rng(0)
V768 = RNG.standard_normal((3, 768)).astype(np.float32)
V1024 = RNG.standard_normal((3, 1024)).astype(np.float32)
V1280 = RNG.standard_normal((3, 1280)).astype(np.float32)


def _t(array):
    return torch.from_numpy(np.array(array))


# ---- reading ---------------------------------------------------------------------------------------------------

def test_kohya_emb_params_safetensors(tmp_path):
    path = tmp_path / "mytoy.safetensors"
    safetensors.torch.save_file({"emb_params": _t(V768)}, str(path))
    embedding = read_embedding(path)
    assert embedding.name == "mytoy" and embedding.num_vectors == 3 and not embedding.is_sdxl
    assert np.array_equal(embedding.vectors["emb"], V768)


def test_diffusers_single_token_and_1d_vector(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"
    safetensors.torch.save_file({"<cat-toy>": _t(V768[0])}, str(path))
    embedding = read_embedding(path)
    assert embedding.num_vectors == 1 and embedding.vectors["emb"].shape == (1, 768)
    assert np.array_equal(embedding.vectors["emb"][0], V768[0])


def test_fp16_and_bf16_files_become_float32(tmp_path):
    half = tmp_path / "half.safetensors"
    safetensors.torch.save_file({"emb_params": _t(V768).half()}, str(half))
    assert read_embedding(half).vectors["emb"].dtype == np.float32
    bf16 = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"emb_params": _t(V768).bfloat16()}, str(bf16))
    np.testing.assert_array_equal(read_embedding(bf16).vectors["emb"], _t(V768).bfloat16().float().numpy())


def test_sdxl_safetensors_and_its_errors(tmp_path):
    path = tmp_path / "xl.safetensors"
    safetensors.torch.save_file({"clip_l": _t(V768), "clip_g": _t(V1280)}, str(path))
    embedding = read_embedding(path)
    assert embedding.is_sdxl and embedding.num_vectors == 3
    assert np.array_equal(embedding.vectors["clip_g"], V1280)
    safetensors.torch.save_file({"clip_l": _t(V768)}, str(tmp_path / "half_xl.safetensors"))
    with pytest.raises(UserError, match="clip_g is missing"):
        read_embedding(tmp_path / "half_xl.safetensors")
    safetensors.torch.save_file({"clip_l": _t(V768), "clip_g": _t(V1280[:2])}, str(tmp_path / "uneven.safetensors"))
    with pytest.raises(UserError, match="3 vectors but clip_g has 2"):
        read_embedding(tmp_path / "uneven.safetensors")


def test_a1111_pt_needs_consent(tmp_path):
    path = tmp_path / "a1111.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": _t(V768)}, "name": "other", "step": 42,
                "sd_checkpoint": "0123456789", "sd_checkpoint_name": "model"}, str(path))
    with pytest.raises(UserError, match="pickle.*--allow_unsafe_pickle") as error:
        read_embedding(path)
    assert "a1111.pt" in str(error.value)
    embedding = read_embedding(path, allow_pickle=True)
    assert embedding.name == "a1111" and embedding.step == 42  # the file stem names it, as in A1111
    assert np.array_equal(embedding.vectors["emb"], V768)


def test_old_parameter_dict_pt_and_bin_and_bare_tensor(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(_t(V768[:1]))})}, str(old))
    assert np.array_equal(read_embedding(old, allow_pickle=True).vectors["emb"], V768[:1])
    diffusers_bin = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": _t(V768[0])}, str(diffusers_bin))
    assert read_embedding(diffusers_bin, allow_pickle=True).vectors["emb"].shape == (1, 768)
    bare = tmp_path / "bare.pt"
    torch.save(_t(V768[:2]), str(bare))
    assert read_embedding(bare, allow_pickle=True).num_vectors == 2
    xl = tmp_path / "xl.pt"
    torch.save({"clip_l": _t(V768), "clip_g": _t(V1280)}, str(xl))
    assert read_embedding(xl, allow_pickle=True).is_sdxl


def test_unreadable_layouts(tmp_path):
    safetensors.torch.save_file({"a": _t(V768), "b": _t(V768)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(UserError, match="cannot identify"):
        read_embedding(tmp_path / "two.safetensors")
    torch.save({"string_to_param": {"*": _t(V768), "x": _t(V768)}}, str(tmp_path / "multi.pt"))
    with pytest.raises(UserError, match="exactly one tensor"):
        read_embedding(tmp_path / "multi.pt", allow_pickle=True)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        read_embedding(tmp_path / "empty.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported extension"):
        read_embedding(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="does not exist"):
        read_embedding(tmp_path / "missing.safetensors")


def test_check_embedding_fits(tmp_path):
    safetensors.torch.save_file({"emb_params": _t(V768)}, str(tmp_path / "sd1.safetensors"))
    safetensors.torch.save_file({"clip_l": _t(V768), "clip_g": _t(V1280)}, str(tmp_path / "xl.safetensors"))
    sd1, xl = read_embedding(tmp_path / "sd1.safetensors"), read_embedding(tmp_path / "xl.safetensors")
    assert [v.shape for v in check_embedding_fits(sd1, "sd1", [768])] == [(3, 768)]
    assert [v.shape for v in check_embedding_fits(xl, "sdxl", [768, 1280])] == [(3, 768), (3, 1280)]
    with pytest.raises(UserError, match=r"'sd1'.*768-wide.*SD1.*does not fit the SD2.x model.*1024"):
        check_embedding_fits(sd1, "sd2", [1024])
    with pytest.raises(UserError, match="SDXL embedding.*does not fit the SD1.x model"):
        check_embedding_fits(xl, "sd1", [768])
    with pytest.raises(UserError, match="needs an SDXL file with clip_l and clip_g"):
        check_embedding_fits(sd1, "sdxl", [768, 1280])


# ---- writing ---------------------------------------------------------------------------------------------------

def test_kohya_safetensors_layout_and_modelspec(tmp_path):
    metadata = modelspec_metadata("sd2", "mytoy", 768, "v_prediction", clip_skip=2, date="2026-01-02T03:04:05")
    path = tmp_path / "mytoy.safetensors"
    save_embedding_safetensors(path, "sd2", [V1024], metadata)
    with safetensors.safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and torch.equal(f.get_tensor("emb_params"), _t(V1024))
        stored = f.metadata()
    assert stored["modelspec.architecture"] == "stable-diffusion-v2-768-v/textual-inversion"
    assert stored["modelspec.prediction_type"] == "v" and stored["modelspec.resolution"] == "768x768"
    assert stored["modelspec.encoder_layer"] == "2" and stored["modelspec.sai_model_spec"] == "1.0.1"
    assert stored["modelspec.date"] == "2026-01-02T03:04:05" and stored["modelspec.title"] == "mytoy"
    assert modelspec_metadata("sdxl", "t", (1024, 768))["modelspec.architecture"] == (
        "stable-diffusion-xl-v1-base/textual-inversion")
    assert modelspec_metadata("sd1", "t", (1024, 768))["modelspec.resolution"] == "1024x768"


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("fp16", torch.float16),
                                              ("bf16", torch.bfloat16)])
def test_sdxl_safetensors_precisions(tmp_path, precision, dtype):
    path = tmp_path / "xl.safetensors"
    save_embedding(path, "sdxl", [V768, V1280], "xl", save_precision=precision)
    loaded = safetensors.torch.load_file(str(path))
    assert set(loaded) == {"clip_l", "clip_g"} and loaded["clip_g"].dtype == dtype
    assert torch.equal(loaded["clip_g"], _t(V1280).to(dtype))
    assert read_embedding(path).is_sdxl


def test_a1111_pt_written_without_torch_loads_in_torch(tmp_path):
    path = tmp_path / "mytoy.pt"
    save_embedding_pt(path, "sd1", [V768], "mytoy", step=300, sd_checkpoint="abcdef0123",
                      sd_checkpoint_name="tiny")
    loaded = torch.load(str(path), weights_only=True)
    assert loaded["string_to_token"] == {"*": 265} and loaded["name"] == "mytoy" and loaded["step"] == 300
    assert loaded["sd_checkpoint"] == "abcdef0123" and loaded["sd_checkpoint_name"] == "tiny"
    assert torch.equal(loaded["string_to_param"]["*"], _t(V768))
    again = read_embedding(path, allow_pickle=True)
    assert again.step == 300 and np.array_equal(again.vectors["emb"], V768)
    with pytest.raises(UserError, match="--save_precision"):
        save_embedding(tmp_path / "x.pt", "sd1", [V768], "x", save_precision="fp8")
    with pytest.raises(UserError, match="--save_model_as"):
        save_embedding(tmp_path / "x.onnx", "sd1", [V768], "x")


# ---- diffusers' loader -----------------------------------------------------------------------------------------

class _Loader(TextualInversionLoaderMixin):
    hf_device_map = None
    components = {}


def _tiny_text_encoder(width):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77)
    return CLIPTextModel(config)


def test_diffusers_loads_our_a1111_pt_with_its_name(tmp_path):
    vectors = RNG.standard_normal((2, 32)).astype(np.float32)
    path = tmp_path / "mytoy.pt"
    save_embedding_pt(path, "sd1", [vectors], "mytoy")
    tokenizer, encoder = load_clip_tokenizer(), _tiny_text_encoder(32)
    _Loader().load_textual_inversion(str(path), tokenizer=tokenizer, text_encoder=encoder)
    ids = tokenizer.convert_tokens_to_ids(["mytoy", "mytoy_1"])
    assert ids == [49408, 49409]
    rows = encoder.get_input_embeddings().weight.detach()[ids].numpy()
    np.testing.assert_array_equal(rows, vectors)


def test_diffusers_loads_our_sdxl_safetensors_the_documented_way(tmp_path):
    clip_l, clip_g = (RNG.standard_normal((1, w)).astype(np.float32) for w in (32, 48))
    path = tmp_path / "xl.safetensors"
    save_embedding_safetensors(path, "sdxl", [clip_l, clip_g])
    state = safetensors.torch.load_file(str(path))
    for key, width, expected in (("clip_l", 32, clip_l), ("clip_g", 48, clip_g)):
        tokenizer, encoder = load_clip_tokenizer("eos" if key == "clip_l" else "!"), _tiny_text_encoder(width)
        _Loader().load_textual_inversion(state[key], token="<xl-ti>", tokenizer=tokenizer, text_encoder=encoder)
        row = encoder.get_input_embeddings().weight.detach()[tokenizer.convert_tokens_to_ids("<xl-ti>")].numpy()
        np.testing.assert_array_equal(row, expected[0])


def test_legacy_pt_goes_to_torch_or_explains_how_to_convert(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pt"
    torch.save({"emb_params": _t(V768)}, str(path), _use_new_zipfile_serialization=False)
    assert np.array_equal(read_embedding(path, allow_pickle=True).vectors["emb"], V768)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as on a machine without torch
    with pytest.raises(UserError, match="needs PyTorch.*safetensors"):
        read_embedding(path, allow_pickle=True)
    ours = tmp_path / "ours.pt"
    save_embedding_pt(ours, "sd1", [V768], "ours")  # zip files need no torch at all
    assert np.array_equal(read_embedding(ours, allow_pickle=True).vectors["emb"], V768)


def test_a1111_png_card_with_text_chunk(tmp_path):
    import base64
    import json

    from PIL import Image, PngImagePlugin

    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": V768[:2].tolist()}},
            "name": "card-name", "step": 12}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    path = tmp_path / "card.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    embedding = read_embedding(path)
    assert embedding.name == "card-name" and embedding.step == 12
    np.testing.assert_array_equal(embedding.vectors["emb"], V768[:2])
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(UserError, match="sd-ti-embedding"):
        read_embedding(tmp_path / "plain.png")
