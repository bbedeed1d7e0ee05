"""Model detection from keys/shapes/metadata, prediction-type rules, overrides and their error messages."""
import numpy as np
import pytest

from library.checkpoints.detect import detect_spec, family_from_keys
from library.checkpoints.layout import join_single_file
from library.checkpoints.spec_metadata import spec_to_metadata
from library.errors import UserError
from library.models.configs import get_spec
from test_checkpoints_torch_refs import shape_only_components


@pytest.fixture(scope="module")
def full_files():
    """Shape-only LDM/SGM dicts of the real SD1.5, SD2.1 and SDXL base architectures (no memory used)."""
    out = {}
    for name in ("sd15", "sd21", "sdxl-base"):
        spec = get_spec(name)
        out[name] = join_single_file(shape_only_components(spec), spec)
    return out


@pytest.fixture(scope="module")
def tiny_files():
    out = {}
    for name in ("tiny-sd15", "tiny-sd21", "tiny-sdxl"):
        spec = get_spec(name)
        out[name] = join_single_file(shape_only_components(spec), spec)
    return out


def test_real_architectures_are_recognised(full_files):
    assert detect_spec(full_files["sd15"]).name == "sd15"
    assert detect_spec(full_files["sdxl-base"]).name == "sdxl-base"
    sd2 = detect_spec(full_files["sd21"])  # keys cannot show it: SD2 defaults to the 768 v model
    assert (sd2.name, sd2.prediction_type, sd2.resolution) == ("sd21-v", "v_prediction", 768)
    assert detect_spec(full_files["sd21"], global_step=875000).name == "sd21"  # the 512 epsilon base .ckpt


def test_family_from_reference_keys(full_files):
    assert [family_from_keys(full_files[n]) for n in ("sd15", "sd21", "sdxl-base")] == ["sd1", "sd2", "sdxl"]
    unet_only = {k: v for k, v in full_files["sd21"].items() if k.startswith("model.diffusion_model.")}
    assert family_from_keys(unet_only) == "sd2"  # cross-attention width 1024


def test_tiny_files_without_metadata_match_the_tiny_specs(tiny_files):
    assert detect_spec(tiny_files["tiny-sd15"]).name == "tiny-sd15"
    assert detect_spec(tiny_files["tiny-sd21"]).name == "tiny-sd21-v"
    assert detect_spec(tiny_files["tiny-sdxl"]).name == "tiny-sdxl"


def test_sd2_files_without_openclip_last_layer_are_recognised(full_files, tiny_files):
    """diffusers' conversion script writes SD2 encoders with 23 resblocks (kohya/OpenCLIP files have 24)."""
    for name, layers in (("sd21", 23), ("tiny-sd21", 3)):
        files = full_files if name == "sd21" else tiny_files
        last = f"cond_stage_model.model.transformer.resblocks.{layers}."
        trimmed = {k: v for k, v in files[name].items() if not k.startswith(last)}
        assert len(trimmed) < len(files[name])
        assert detect_spec(trimmed, v_parameterization=False).name == name


def test_v_parameterization_override_and_yaml(tiny_files, tmp_path):
    assert detect_spec(tiny_files["tiny-sd21"], v_parameterization=False).name == "tiny-sd21"
    spec = detect_spec(tiny_files["tiny-sd15"], v_parameterization=True)
    assert spec.family == "sd1" and spec.prediction_type == "v_prediction"
    checkpoint = tmp_path / "model.safetensors"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert detect_spec(tiny_files["tiny-sdxl"], path=str(checkpoint)).prediction_type == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert detect_spec(tiny_files["tiny-sd21"], path=str(checkpoint)).name == "tiny-sd21"


def test_metadata_spec_wins_over_shapes(tiny_files):
    spec = get_spec("tiny-sd21-v")
    assert detect_spec(tiny_files["tiny-sd21"], metadata=spec_to_metadata(spec)).name == "tiny-sd21-v"
    epsilon = detect_spec(tiny_files["tiny-sd21"], metadata=spec_to_metadata(spec), v_parameterization=False)
    assert epsilon.prediction_type == "epsilon"
    with pytest.raises(UserError, match="ms_sd.model_spec"):
        detect_spec(tiny_files["tiny-sd15"], path="x.safetensors", metadata={"ms_sd.model_spec": "{not json"})


def test_kohya_modelspec_metadata_gives_the_prediction(tiny_files):
    v = {"modelspec.architecture": "stable-diffusion-v2-768-v", "modelspec.prediction_type": "v"}
    assert detect_spec(tiny_files["tiny-sd21"], metadata=v).name == "tiny-sd21-v"
    assert detect_spec(tiny_files["tiny-sd21"], metadata={"modelspec.prediction_type": "epsilon"}).name == "tiny-sd21"
    assert detect_spec(tiny_files["tiny-sdxl"], metadata={"modelspec.prediction_type": "v"}).prediction_type == \
        "v_prediction"


def test_contradicting_overrides_are_errors(tiny_files):
    with pytest.raises(UserError, match=r"--sdxl was given but a\.safetensors is an SD1\.x checkpoint"):
        detect_spec(tiny_files["tiny-sd15"], path="a.safetensors", sdxl=True)
    with pytest.raises(UserError, match=r"--v2 was given but b\.safetensors is an SDXL checkpoint"):
        detect_spec(tiny_files["tiny-sdxl"], path="b.safetensors", v2=True)
    with pytest.raises(UserError, match="--v2"):
        detect_spec(tiny_files["tiny-sd21"], path="c.safetensors", v2=False)
    # kohya's flags: --v2 alone is the 512px epsilon model, --v2 --v_parameterization the 768-v one
    assert detect_spec(tiny_files["tiny-sd21"], v2=True).name == "tiny-sd21"
    assert detect_spec(tiny_files["tiny-sd21"], v2=True, v_parameterization=True).name == "tiny-sd21-v"


def test_unknown_shapes_ask_for_model_config(tiny_files):
    odd = dict(tiny_files["tiny-sd15"])
    odd["model.diffusion_model.input_blocks.0.0.weight"] = np.zeros((32, 9, 3, 3), np.float32)  # inpainting-like
    with pytest.raises(UserError) as info:
        detect_spec(odd, path="odd.safetensors")
    message = str(info.value)
    assert "odd.safetensors" in message and "--model_config" in message and "in_channels: file 9" in message
    assert detect_spec(odd, model_config="tiny-sd15").name == "tiny-sd15"  # the user names the config


def test_model_config_of_the_wrong_family_is_refused(tiny_files):
    with pytest.raises(UserError, match=r"--model_config tiny-sdxl describes an SDXL model but m\.safetensors is "
                                        r"an SD1\.x checkpoint"):
        detect_spec(tiny_files["tiny-sd15"], path="m.safetensors", model_config="tiny-sdxl")
    with pytest.raises(UserError, match="--model_config nope: neither an existing diffusers folder"):
        detect_spec(tiny_files["tiny-sd15"], model_config="nope")


def test_files_without_model_weights_and_refiners():
    with pytest.raises(UserError, match="holds no Stable Diffusion weights"):
        detect_spec({"lora_unet_a.lora_down.weight": np.zeros((1, 1))}, path="l.safetensors", sdxl=True)
    with pytest.raises(UserError, match="cannot tell which model family"):
        detect_spec({"lora_unet_a.lora_down.weight": np.zeros((1, 1))}, path="l.safetensors")
    with pytest.raises(UserError, match="refiner"):
        detect_spec({"conditioner.embedders.0.model.ln_final.weight": np.zeros(4)})
