"""The metadata the trainers write into saved files, read back from the files: LoRA `ss_network_args` as the
user wrote it (kohya's json.dumps of the key=value strings), bucket settings null with bucketing off, and the
modelspec.* fields of kohya's --metadata_* options for LoRA and textual-inversion files.

No training runs: each method is built on the tiny model (nothing compiles) and saves its initial weights."""
import base64
import json
import os

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import train_network
import train_textual_inversion
from library.data import build_dataset_group
from library.errors import UserError
from library.models.bundle import build_bundle
from library.training import session


def _images(folder, count):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (64, 64), (20 * i, 90, 160)).save(os.path.join(folder, f"{i}.png"))
        with open(os.path.join(folder, f"{i}.txt"), "w", encoding="utf-8") as f:
            f.write("a photo of mytoy")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    _images(root / "train" / "2_mytoy", 2)
    _images(root / "reg" / "1_toy", 3)
    return root


def _lora_file(root, tmp_path, extra):
    from library.networks.training import LoRATraining

    parser = session.build_parser("test", True, train_network.add_network_arguments)
    args = session.parse_arguments(parser, [
        "--train_data_dir", str(root / "train"), "--reg_data_dir", str(root / "reg"), "--resolution", "64",
        "--caption_extension", ".txt", "--network_dim", "4", "--network_train_unet_only", "--seed", "1",
        "--output_dir", str(tmp_path), "--output_name", "toy", *extra])
    group = build_dataset_group(args, seed=1)
    method = LoRATraining(args, build_bundle("tiny-sd15"))
    method.attach_metadata(group, steps_per_epoch=len(group), total_steps=10)
    path = tmp_path / "toy.safetensors"
    method.save(str(path), step=10, epoch=1)
    with safe_open(str(path), framework="np") as f:
        return f.metadata()


def test_lora_network_args_as_written_and_null_buckets(data_root, tmp_path):
    meta = _lora_file(data_root, tmp_path, ["--network_args", "conv_dim=4", "conv_alpha=2.0", "rank_dropout=.1"])
    # kohya: the strings as given, plus its `dropout` default (--network_dropout) when not given
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0", "rank_dropout": ".1",
                                                   "dropout": None}
    assert meta["ss_network_args"] == '{"conv_dim": "4", "conv_alpha": "2.0", "rank_dropout": ".1", "dropout": null}'
    # folder mode with bucketing off
    assert (meta["ss_bucket_info"], meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"]) == ("null", "None", "None")
    assert meta["ss_enable_bucket"] == "False" and meta["ss_bucket_no_upscale"] == "False"
    assert meta["ss_num_train_images"] == "4" and meta["ss_num_reg_images"] == "3"  # 3 reg images, 2 used
    assert "ss_datasets" not in meta

    plain = _lora_file(data_root, tmp_path, ["--network_dropout", "0.25"])
    assert "ss_network_args" not in plain  # kohya omits it when --network_args is not given


def test_lora_modelspec_options(data_root, tmp_path):
    thumbnail = tmp_path / "thumb.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(thumbnail)
    values = {"title": "My toy", "author": "me", "description": "a toy", "license": "MIT", "tags": "toy,photo",
              "usage_hint": "say mytoy", "merged_from": "a, b", "trigger_phrase": "mytoy",
              "preprocessor": "none", "is_negative_embedding": "false"}
    options = [x for k, v in values.items() for x in (f"--metadata_{k}", v)]
    meta = _lora_file(data_root, tmp_path, options + ["--metadata_thumbnail", str(thumbnail), "--min_timestep", "100",
                                                      "--clip_skip", "2"])
    for key, value in values.items():
        assert meta[f"modelspec.{key}"] == value
    encoded = base64.b64encode(thumbnail.read_bytes()).decode("ascii")
    assert meta["modelspec.thumbnail"] == f"data:image/png;base64,{encoded}"
    assert meta["modelspec.resolution"] == "64x64"  # --resolution, as kohya
    assert meta["modelspec.timestep_range"] == "100,1000" and meta["modelspec.encoder_layer"] == "2"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.implementation_version"].startswith("sdms/")
    assert "." not in meta["modelspec.date"]  # whole seconds, as kohya


def test_missing_thumbnail_is_refused_before_loading(tmp_path):
    parser = session.build_parser("test", True, train_network.add_network_arguments)
    with pytest.raises(UserError, match="--metadata_thumbnail .*no such image file"):
        session.parse_arguments(parser, ["--metadata_thumbnail", str(tmp_path / "missing.png")])


def test_textual_inversion_modelspec_options(data_root, tmp_path):
    from library.text.token_strings import add_token_string
    from library.training.textual_inversion import TextualInversion

    parser = session.build_parser("test", False, train_textual_inversion.add_textual_inversion_arguments)
    args = session.parse_arguments(parser, [
        "--token_string", "mytoy", "--init_word", "toy", "--output_name", "mytoy", "--metadata_author", "me",
        "--metadata_trigger_phrase", "mytoy", "--metadata_is_negative_embedding", "true",
        "--metadata_usage_hint", "put mytoy in the prompt", "--metadata_thumbnail", "data:image/png;base64,AAAA",
        "--max_timestep", "900"])
    bundle = build_bundle("tiny-sd15")
    token_ids = add_token_string(bundle.tokenizers, "mytoy", 1)
    method = TextualInversion(args, bundle, token_ids)
    path = tmp_path / "mytoy.safetensors"
    method.save(str(path), step=1, epoch=1)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert np.asarray(f.get_tensor("emb_params")).shape[0] == 1
    assert meta["modelspec.title"] == "mytoy" and meta["modelspec.author"] == "me"
    assert meta["modelspec.trigger_phrase"] == "mytoy" and meta["modelspec.is_negative_embedding"] == "true"
    assert meta["modelspec.usage_hint"] == "put mytoy in the prompt"
    assert meta["modelspec.thumbnail"] == "data:image/png;base64,AAAA"  # a data URL is kept as given
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "512x512"  # no --resolution: the architecture's default, as kohya
    assert meta["modelspec.timestep_range"] == "0,900"
    for absent in ("description", "license", "tags", "merged_from", "preprocessor", "encoder_layer"):
        assert f"modelspec.{absent}" not in meta
