"""load_model / save_single_file against diffusers: a torch-made single file and the same model's diffusers
folder load into our Cells with identical weights, and the file our writer makes from a bundle is read by
diffusers `from_single_file` with every tensor equal."""
import numpy as np
import pytest

from library.checkpoints import ensure_tiny_checkpoint, load_model, save_single_file
from library.checkpoints.layout import join_single_file
from library.checkpoints.spec_metadata import SPEC_METADATA_KEY
from library.formats.safetensors_io import read_safetensors, write_safetensors
from library.models.configs import get_spec
from library.models.weights import state_dict
from test_checkpoints_torch_refs import (build_torch_models, components_of, load_with_diffusers,
                                         pipeline_modules, save_diffusers_folder)


def bundle_weights(bundle):
    return {"unet": state_dict(bundle.unet), "vae": state_dict(bundle.vae),
            "text_encoders": [state_dict(e) for e in bundle.text_encoders]}


def assert_same(got, expected):
    for part in ("unet", "vae"):
        assert set(got[part]) == set(expected[part]), part
        for name, value in expected[part].items():
            assert np.array_equal(got[part][name], value), f"{part}: {name}"
    for index, (got_te, expected_te) in enumerate(zip(got["text_encoders"], expected["text_encoders"])):
        assert set(got_te) == set(expected_te), index
        for name, value in expected_te.items():
            assert np.array_equal(got_te[name], value), f"text encoder {index + 1}: {name}"
    assert len(got["text_encoders"]) == len(expected["text_encoders"])


@pytest.fixture(scope="module", params=["tiny-sd15", "tiny-sd21", "tiny-sdxl"])
def reference(request, tmp_path_factory):
    """A torch model as a single file (no metadata: detection by shapes) and as a diffusers folder."""
    spec = get_spec(request.param)
    unet, vae, encoders = build_torch_models(spec, seed=11)
    folder = tmp_path_factory.mktemp(request.param)
    components = components_of(unet, vae, encoders)
    single = str(folder / "model.safetensors")
    write_safetensors(single, join_single_file(components, spec))
    diffusers_folder = save_diffusers_folder(spec, unet, vae, encoders, str(folder / "diffusers"))
    return spec, single, diffusers_folder, components, folder


@pytest.fixture(scope="module")
def from_file(reference):
    spec, single = reference[:2]
    return load_model(single, v_parameterization=spec.prediction_type == "v_prediction")


def test_single_file_and_diffusers_folder_load_the_same_weights(reference, from_file):
    spec, single, folder, components, _ = reference
    assert from_file.spec.name == spec.name
    assert_same(bundle_weights(from_file), components)
    from_folder = load_model(folder)
    assert from_folder.spec.family == spec.family
    assert from_folder.spec.prediction_type == spec.prediction_type  # from scheduler_config.json
    assert from_folder.spec.unet["block_out_channels"] == spec.unet["block_out_channels"]
    assert len(from_folder.tokenizers) == len(spec.text_encoders)
    assert_same(bundle_weights(from_folder), components)


def test_our_writer_is_read_by_diffusers_with_every_tensor_equal(reference, from_file):
    spec, single, folder, components, tmp = reference
    bundle = from_file
    written = str(tmp / "ours.safetensors")
    save_single_file(bundle, written, metadata={"note": "round trip"})
    _, metadata = read_safetensors(written)
    assert metadata["note"] == "round trip" and SPEC_METADATA_KEY in metadata
    assert metadata["modelspec.prediction_type"] == ("v" if spec.prediction_type == "v_prediction" else "epsilon")
    pipe = load_with_diffusers(spec, written, folder)
    assert_same(components_of(*pipeline_modules(spec, pipe)), components)
    again = load_model(written)  # the stored spec is used, no guessing
    assert again.spec == bundle.spec
    assert_same(bundle_weights(again), components)


def test_save_precision_fp16_and_bf16(tmp_path):
    bundle = load_model(ensure_tiny_checkpoint("tiny-sd15", str(tmp_path / "tiny.safetensors"), seed=5))
    original = bundle_weights(bundle)["unet"]["conv_in.weight"]
    key = "model.diffusion_model.input_blocks.0.0.weight"
    half, _ = read_safetensors(save_single_file(bundle, str(tmp_path / "half.safetensors"), save_dtype="fp16"))
    assert half[key].dtype == np.float16
    np.testing.assert_allclose(half[key], original, rtol=1e-3, atol=1e-4)
    bf16 = save_single_file(bundle, str(tmp_path / "bf16.safetensors"), save_dtype="bf16")
    with open(bf16, "rb") as f:
        assert b'"BF16"' in f.read(4096)
    reloaded = bundle_weights(load_model(bf16))["unet"]["conv_in.weight"]
    assert reloaded.dtype == np.float32
    np.testing.assert_allclose(reloaded, original, rtol=1e-2, atol=1e-3)


def test_tiny_checkpoint_is_created_once_and_seeded(tmp_path):
    first = ensure_tiny_checkpoint("tiny-sdxl", str(tmp_path / "a.safetensors"), seed=1)
    same_seed = ensure_tiny_checkpoint("tiny-sdxl", str(tmp_path / "b.safetensors"), seed=1)
    other_seed = ensure_tiny_checkpoint("tiny-sdxl", str(tmp_path / "c.safetensors"), seed=2)
    a, b, c = (read_safetensors(p)[0] for p in (first, same_seed, other_seed))
    key = "conditioner.embedders.1.model.text_projection"
    assert np.array_equal(a[key], b[key]) and not np.array_equal(a[key], c[key])
    before = open(first, "rb").read()
    ensure_tiny_checkpoint("tiny-sdxl", first, seed=9)  # exists: left alone
    assert open(first, "rb").read() == before
    bundle = load_model(first)
    assert bundle.spec.name == "tiny-sdxl" and len(bundle.tokenizers) == 2


def test_unknown_architecture_loads_with_a_diffusers_model_config(tmp_path):
    """Shapes of no named spec: refused without --model_config, loaded exactly with a config folder."""
    from library.errors import UserError

    spec = get_spec("tiny-sd15")
    spec.unet.update(block_out_channels=[16, 32], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
                     attention_head_dim=4)
    spec.vae.update(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1)
    spec.text_encoders[0].update(num_hidden_layers=2, hidden_size=32, intermediate_size=48)
    unet, vae, encoders = build_torch_models(spec, seed=21)
    components = components_of(unet, vae, encoders)
    single = str(tmp_path / "custom.safetensors")
    write_safetensors(single, join_single_file(components, spec))
    folder = save_diffusers_folder(spec, unet, vae, encoders, str(tmp_path / "config"))
    with pytest.raises(UserError, match="--model_config"):
        load_model(single)
    bundle = load_model(single, model_config=folder)
    assert bundle.spec.unet["layers_per_block"] == 1 and bundle.spec.family == "sd1"
    assert_same(bundle_weights(bundle), components)


def test_sharded_and_variant_component_weights(tmp_path):
    from library.checkpoints.diffusers_folder import read_component

    unet = tmp_path / "unet"
    unet.mkdir()
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)
    write_safetensors(str(unet / "part-1.safetensors"), {"conv_in.weight": a})
    write_safetensors(str(unet / "part-2.safetensors"), {"conv_in.bias": b})
    (unet / "diffusion_pytorch_model.safetensors.index.json").write_text(
        '{"weight_map": {"conv_in.weight": "part-1.safetensors", "conv_in.bias": "part-2.safetensors"}}')
    got = read_component(str(tmp_path), "unet")
    assert set(got) == {"conv_in.weight", "conv_in.bias"} and np.array_equal(got["conv_in.weight"], a)
    encoder = tmp_path / "text_encoder"
    encoder.mkdir()  # transformers >= 5.6 writes CLIPTextModel without the `text_model.` prefix; fp16 variant
    write_safetensors(str(encoder / "model.fp16.safetensors"),
                      {"final_layer_norm.bias": b.astype(np.float16),
                       "embeddings.position_ids": np.arange(4, dtype=np.int64)[None]})
    assert list(read_component(str(tmp_path), "text_encoder")) == ["text_model.final_layer_norm.bias"]
