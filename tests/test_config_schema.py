"""Dataset config schema: what is accepted, what is rejected, and that the messages say where and what."""
import json

import pytest

from library.config import ConfigSanitizer, blueprint_from_user_config, load_config_dict
from library.errors import UserError


def sanitize(config, support_dropout=False):
    return ConfigSanitizer(support_dropout=support_dropout).sanitize(config, "cfg.toml")


def error_text(config, support_dropout=False):
    with pytest.raises(UserError) as info:
        sanitize(config, support_dropout)
    return str(info.value)


def test_accepts_all_key_groups():
    config = {
        "general": {"shuffle_caption": True, "caption_extension": ".txt", "keep_tokens": 1, "resolution": 512,
                    "enable_wildcard": True, "resize_interpolation": "lanczos"},
        "datasets": [{
            "resolution": [512, 768], "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 256,
            "max_bucket_reso": 1024, "bucket_reso_steps": 64, "bucket_no_upscale": False,
            "network_multiplier": 1, "validation_split": 0.1, "validation_seed": 3,
            "subsets": [{"image_dir": "a", "num_repeats": 10, "class_tokens": "sks dog", "is_reg": False,
                         "flip_aug": True, "caption_prefix": "p", "token_warmup_step": 0.5,
                         "custom_attributes": {"x": 1}, "face_crop_aug_range": [2, 4]}],
        }],
    }
    clean = sanitize(config)
    dataset = clean["datasets"][0]
    assert dataset["resolution"] == (512, 768)
    assert dataset["network_multiplier"] == 1.0 and isinstance(dataset["network_multiplier"], float)
    assert clean["general"]["resolution"] == (512, 512)
    assert dataset["subsets"][0]["face_crop_aug_range"] == (2.0, 4.0)


def test_unknown_key_names_file_path_and_closest_key():
    text = error_text({"datasets": [{"subsets": [{"image_dir": "a"}, {"image_dir": "b", "num_repeat": 3}]}]})
    assert "cfg.toml" in text
    assert "datasets[0].subsets[1].num_repeat" in text
    assert "did you mean `num_repeats`?" in text


def test_wrong_type_says_what_was_expected():
    text = error_text({"datasets": [{"subsets": [{"image_dir": "a", "num_repeats": "10"}]}]})
    assert "datasets[0].subsets[0].num_repeats" in text
    assert "expected an integer" in text and "'10'" in text


def test_bool_is_not_an_integer():
    text = error_text({"datasets": [{"batch_size": True, "subsets": [{"image_dir": "a"}]}]})
    assert "datasets[0].batch_size" in text and "expected an integer" in text


def test_missing_image_dir_is_reported():
    text = error_text({"datasets": [{"subsets": [{"num_repeats": 2}]}]})
    assert "datasets[0].subsets[0].image_dir" in text
    assert "required key missing" in text


def test_mixed_subset_kinds_rejected():
    text = error_text({"datasets": [{"subsets": [{"image_dir": "a"}, {"metadata_file": "m.json"}]}]})
    assert "datasets[0]" in text and "cannot be mixed" in text
    assert "DreamBooth" in text and "fine-tuning" in text


def test_dropout_keys_rejected_for_textual_inversion_accepted_for_lora():
    config = {"datasets": [{"caption_tag_dropout_rate": 0.1,
                            "subsets": [{"image_dir": "a", "caption_dropout_rate": 0.05}]}]}
    text = error_text(config, support_dropout=False)
    assert "datasets[0].caption_tag_dropout_rate" in text
    assert "datasets[0].subsets[0].caption_dropout_rate" in text
    assert "LoRA" in text and "textual inversion" in text
    clean = sanitize(config, support_dropout=True)
    assert clean["datasets"][0]["subsets"][0]["caption_dropout_rate"] == 0.05


def test_dataset_level_key_in_subset_is_explained():
    text = error_text({"datasets": [{"subsets": [{"image_dir": "a", "validation_split": 0.1}]}]})
    assert "datasets[0].subsets[0].validation_split" in text and "dataset-level key" in text


def test_argparse_only_key_is_explained():
    text = error_text({"general": {"prior_loss_weight": 1.0}, "datasets": []})
    assert "general.prior_loss_weight" in text and "--prior_loss_weight" in text


def test_single_brackets_for_datasets_explained():
    text = error_text({"datasets": {"resolution": 512}})
    assert "[[datasets]]" in text


def test_finetuning_subset_requires_metadata_file_only():
    clean = sanitize({"datasets": [{"subsets": [{"metadata_file": "m.json"}]}]})
    assert clean["datasets"][0]["_kind"] == "finetuning"
    text = error_text({"datasets": [{"subsets": [{"metadata_file": "m.json", "is_reg": True}]}]})
    assert "datasets[0].subsets[0].is_reg" in text and "only valid in a DreamBooth subset" in text


def test_several_problems_in_one_message():
    text = error_text({"general": {"flip_agu": True}, "datasets": [{"subsets": [{"image_dir": 3}]}]})
    assert "2 problems" in text
    assert "general.flip_agu" in text and "did you mean `flip_aug`?" in text
    assert "datasets[0].subsets[0].image_dir" in text and "expected a string" in text


def test_toml_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[general]\nshuffle_caption = true\nkeep_tokens 1\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_config_dict(str(path))
    text = str(info.value)
    assert str(path) in text and "line 3" in text and "column" in text and "keep_tokens 1" in text


def test_json_config_and_json_syntax_error(tmp_path):
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"datasets": [{"subsets": [{"image_dir": "x"}]}]}), encoding="utf-8")
    assert load_config_dict(str(good))["datasets"][0]["subsets"][0]["image_dir"] == "x"
    bad = tmp_path / "bad.json"
    bad.write_text('{"datasets": [\n  {"subsets": }\n]}', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_config_dict(str(bad))
    assert "line 2" in str(info.value) and "column" in str(info.value)


def test_unsupported_extension_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unsupported file format"):
        load_config_dict(str(tmp_path / "x.yaml"))
    with pytest.raises(UserError, match="not found"):
        load_config_dict(str(tmp_path / "missing.toml"))


def test_missing_image_dir_folder_names_both_places_tried(tmp_path):
    config_file = tmp_path / "cfg.toml"
    config = {"datasets": [{"resolution": 64, "subsets": [{"image_dir": "nowhere"}]}]}
    with pytest.raises(UserError) as info:
        blueprint_from_user_config(config, None, config_file=str(config_file))
    text = str(info.value)
    assert "datasets[0].subsets[0].image_dir" in text and str(tmp_path / "nowhere") in text


def test_resolution_required(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserError, match="resolution is not set"):
        blueprint_from_user_config({"datasets": [{"subsets": [{"image_dir": "imgs"}]}]}, None,
                                   config_file=str(tmp_path / "c.toml"))
