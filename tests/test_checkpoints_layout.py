"""Single-file layout conversion: our reader gives back what the writer wrote (SD2's fabricated layer, SDXL's
transposed projection), and the legacy/odd layouts real files have. (diffusers reading our files:
test_checkpoints_loader.py.)"""
import numpy as np
import pytest

from library.checkpoints.clip_keys import hf_to_openclip, openclip_to_hf
from library.checkpoints.layout import join_single_file, split_single_file
from library.checkpoints.vae_keys import diffusers_to_ldm_vae, ldm_to_diffusers_vae, normalize_legacy_vae_names
from library.formats.safetensors_io import read_safetensors, write_safetensors
from library.models.configs import get_spec
from test_checkpoints_torch_refs import build_torch_models, components_of


def _assert_components_equal(got, expected):
    for part in ("unet", "vae"):
        assert set(got[part]) == set(expected[part]), part
        for name, value in expected[part].items():
            assert got[part][name].shape == value.shape and np.array_equal(got[part][name], value), name
    assert len(got["text_encoders"]) == len(expected["text_encoders"])
    for got_te, expected_te in zip(got["text_encoders"], expected["text_encoders"]):
        assert set(got_te) == set(expected_te)
        for name, value in expected_te.items():
            assert np.array_equal(got_te[name], value), name


@pytest.fixture(scope="module", params=["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def written(request, tmp_path_factory):
    spec = get_spec(request.param)
    unet, vae, encoders = build_torch_models(spec, seed=3)
    folder = tmp_path_factory.mktemp(request.param)
    path = str(folder / "model.safetensors")
    components = components_of(unet, vae, encoders)
    write_safetensors(path, join_single_file(components, spec))
    return spec, path, components


def test_our_reader_returns_the_written_tensors(written):
    spec, path, components = written
    tensors, _ = read_safetensors(path)
    got, unexpected, extras = split_single_file(tensors, spec)
    assert unexpected == []
    _assert_components_equal(got, components)
    if spec.family == "sd2":  # kohya's fabricated 24th layer and projection are in the file, not in the model
        layers = spec.text_encoders[0]["num_hidden_layers"]
        assert f"cond_stage_model.model.transformer.resblocks.{layers}.ln_1.weight" in tensors
        assert "cond_stage_model.model.text_projection" in tensors
        assert float(extras["logit_scale"][0]) == 1.0
    if spec.family == "sdxl":  # OpenCLIP's `x @ P` is the transpose of the HF Linear weight
        hf = components["text_encoders"][1]["text_projection.weight"]
        assert np.array_equal(tensors["conditioner.embedders.1.model.text_projection"], hf.T)


def test_ldm_extras_are_ignored_and_stray_keys_reported(written):
    spec, path, components = written
    tensors, _ = read_safetensors(path)
    tensors["alphas_cumprod"] = np.ones(4, np.float32)
    tensors["model_ema.decay"] = np.ones((), np.float32)
    tensors["model.diffusion_model.input_blocks.99.0.weight"] = np.ones(1, np.float32)
    tensors["lora_unet_stray.alpha"] = np.ones((), np.float32)
    _, unexpected, _ = split_single_file(tensors, spec)
    assert unexpected == ["model.diffusion_model.input_blocks.99.0.weight", "lora_unet_stray.alpha"]


def test_old_sd1_text_encoder_names_and_position_ids():
    spec = get_spec("tiny-sd15")
    prefix = "cond_stage_model.transformer."
    tensors = {prefix + "embeddings.token_embedding.weight": np.ones((5, 2), np.float32),
               prefix + "text_model.embeddings.position_ids": np.arange(77)[None],
               prefix + "final_layer_norm.bias": np.zeros(2, np.float32)}
    got, unexpected, _ = split_single_file(tensors, spec)
    assert unexpected == []
    assert set(got["text_encoders"][0]) == {"text_model.embeddings.token_embedding.weight",
                                            "text_model.final_layer_norm.bias"}


def test_vae_mid_attention_reshape_and_legacy_names():
    config = get_spec("tiny-sd15").vae
    conv = np.arange(16 * 16, dtype=np.float32).reshape(16, 16, 1, 1)
    diffusers, unmapped = ldm_to_diffusers_vae({"decoder.mid.attn_1.q.weight": conv,
                                                "decoder.up.3.block.2.nin_shortcut.bias": np.ones(3)}, config)
    assert unmapped == []
    assert diffusers["decoder.mid_block.attentions.0.to_q.weight"].shape == (16, 16)
    assert "decoder.up_blocks.0.resnets.2.conv_shortcut.bias" in diffusers  # decoder levels reversed
    legacy = normalize_legacy_vae_names({"encoder.mid_block.attentions.0.proj_attn.weight": conv[:, :, 0, 0]})
    assert list(legacy) == ["encoder.mid_block.attentions.0.to_out.0.weight"]
    ldm, unmapped = diffusers_to_ldm_vae(legacy, config)
    assert unmapped == [] and ldm["encoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)


def test_openclip_split_and_fabrication_round_trip():
    config = dict(get_spec("tiny-sd21").text_encoders[0])
    width, layers = config["hidden_size"], config["num_hidden_layers"]
    rng = np.random.default_rng(0)
    hf = {}
    for k in range(layers):
        for part in ("q_proj", "k_proj", "v_proj"):
            hf[f"text_model.encoder.layers.{k}.self_attn.{part}.weight"] = rng.normal(size=(width, width))
            hf[f"text_model.encoder.layers.{k}.self_attn.{part}.bias"] = rng.normal(size=width)
    openclip, unmapped = hf_to_openclip(hf, config, extra_layers=1)
    assert unmapped == []
    fused = openclip["transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (3 * width, width)
    assert np.array_equal(fused[width:2 * width], hf["text_model.encoder.layers.0.self_attn.k_proj.weight"])
    assert np.array_equal(openclip[f"transformer.resblocks.{layers}.attn.in_proj_bias"],
                          openclip[f"transformer.resblocks.{layers - 1}.attn.in_proj_bias"])
    back, unmapped, extras = openclip_to_hf(openclip, config, with_projection=False)
    assert unmapped == [] and set(back) == set(hf)
    assert all(np.array_equal(back[k], hf[k]) for k in hf)
    assert float(extras["logit_scale"]) == 1.0
