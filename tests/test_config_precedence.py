"""Precedence subset > dataset > general > command line > default, folder mode, --config_file, example TOMLs."""
import argparse
import os

import pytest
from PIL import Image

from library.config import (add_config_file_arguments, add_dataset_arguments, blueprint_from_user_config,
                            generate_blueprint, load_config_file)
from library.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser(support_dropout=False):
    p = argparse.ArgumentParser()
    add_dataset_arguments(p, support_dropout)
    p.add_argument("--train_batch_size", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=2e-6)
    add_config_file_arguments(p)
    return p


def make_dirs(root, *names):
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)


def test_each_level_wins_over_the_ones_below(tmp_path):
    make_dirs(tmp_path, "a", "b")
    args = parser().parse_args(["--resolution", "64", "--keep_tokens", "4", "--caption_extension", ".cli",
                                "--train_batch_size", "3", "--dataset_repeats", "7", "--flip_aug"])
    config = {
        "general": {"keep_tokens": 3, "caption_prefix": "general"},
        "datasets": [{
            "keep_tokens": 2, "caption_prefix": "dataset",
            "subsets": [{"image_dir": "a", "keep_tokens": 1}, {"image_dir": "b", "num_repeats": 2}],
        }],
    }
    bp = blueprint_from_user_config(config, args, config_file=str(tmp_path / "c.toml"))
    dataset = bp.datasets[0]
    first, second = dataset.subsets
    assert first.keep_tokens == 1          # subset
    assert second.keep_tokens == 2         # dataset
    assert first.caption_prefix == "dataset"
    assert first.caption_extension == ".cli"  # command line
    assert dataset.batch_size == 3          # --train_batch_size renamed to batch_size
    assert first.num_repeats == 7 and second.num_repeats == 2  # --dataset_repeats renamed to num_repeats
    assert first.flip_aug is True
    assert dataset.resolution == (64, 64)
    assert first.image_dir == str(tmp_path / "a")
    assert first.token_warmup_min == 1  # command line default
    assert first.secondary_separator is None  # dataclass default


def test_general_beats_command_line_and_defaults_apply(tmp_path):
    make_dirs(tmp_path, "a")
    args = parser().parse_args(["--resolution", "128,64", "--shuffle_caption"])
    config = {"general": {"shuffle_caption": False, "caption_extension": "txt"},
              "datasets": [{"subsets": [{"image_dir": "a"}]}]}
    bp = blueprint_from_user_config(config, args, config_file=str(tmp_path / "c.toml"))
    subset = bp.datasets[0].subsets[0]
    assert subset.shuffle_caption is False
    assert subset.caption_extension == ".txt"  # leading dot added
    assert bp.datasets[0].resolution == (128, 64)
    no_args = blueprint_from_user_config({"datasets": [{"resolution": 64, "subsets": [{"image_dir": "a"}]}]}, None,
                                         config_file=str(tmp_path / "c.toml"))
    assert no_args.datasets[0].subsets[0].caption_extension == ".caption"
    assert no_args.datasets[0].batch_size == 1


def test_relative_image_dir_prefers_config_folder_then_cwd(tmp_path, monkeypatch):
    config_dir = tmp_path / "cfg"
    make_dirs(config_dir, "imgs")
    make_dirs(tmp_path / "cwd", "imgs", "only_here")
    monkeypatch.chdir(tmp_path / "cwd")
    config = {"datasets": [{"resolution": 64, "subsets": [{"image_dir": "imgs"}, {"image_dir": "only_here"}]}]}
    bp = blueprint_from_user_config(config, None, config_file=str(config_dir / "c.toml"))
    assert bp.datasets[0].subsets[0].image_dir == str(config_dir / "imgs")
    assert bp.datasets[0].subsets[1].image_dir == str(tmp_path / "cwd" / "only_here")


def test_duplicate_subset_in_dataset_ignored(tmp_path):
    make_dirs(tmp_path, "a")
    config = {"datasets": [{"resolution": 64, "subsets": [{"image_dir": "a"}, {"image_dir": "a", "num_repeats": 5}]}]}
    bp = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    assert len(bp.datasets[0].subsets) == 1 and bp.datasets[0].subsets[0].num_repeats == 1


def test_bucket_reso_adjusted_and_checked(tmp_path):
    make_dirs(tmp_path, "a")
    config = {"datasets": [{"resolution": 512, "enable_bucket": True, "min_bucket_reso": 300,
                            "max_bucket_reso": 1000, "subsets": [{"image_dir": "a"}]}]}
    dataset = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml")).datasets[0]
    assert (dataset.min_bucket_reso, dataset.max_bucket_reso) == (256, 1024)
    config["datasets"][0]["min_bucket_reso"] = 640
    with pytest.raises(UserError, match="min_bucket_reso 640 must be <= the resolution"):
        blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    # kohya checks them with bucket_no_upscale too (where they choose no bucket)
    config["datasets"][0].update(min_bucket_reso=256, max_bucket_reso=448, bucket_no_upscale=True)
    with pytest.raises(UserError, match="max_bucket_reso 448 must be >= the resolution"):
        blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    config["datasets"][0]["max_bucket_reso"] = 1000
    dataset = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml")).datasets[0]
    assert dataset.max_bucket_reso == 1024


def write_png(path, size=(8, 8)):
    Image.new("RGB", size, (10, 20, 30)).save(path)


def test_folder_mode_subsets_from_repeat_folders(tmp_path):
    make_dirs(tmp_path / "train", "10_sks dog", "notes", "3_a_b")
    make_dirs(tmp_path / "reg", "1_dog")
    args = parser().parse_args(["--train_data_dir", str(tmp_path / "train"), "--reg_data_dir",
                                str(tmp_path / "reg"), "--resolution", "64"])
    bp = generate_blueprint(args)
    subsets = bp.datasets[0].subsets
    summary = sorted((os.path.basename(s.image_dir), s.num_repeats, s.class_tokens, s.is_reg) for s in subsets)
    assert summary == [("10_sks dog", 10, "sks dog", False), ("1_dog", 1, "dog", True), ("3_a_b", 3, "a_b", False)]


def test_folder_mode_explains_parent_folder_rule(tmp_path):
    write_png(tmp_path / "img.png")
    args = parser().parse_args(["--train_data_dir", str(tmp_path), "--resolution", "64"])
    with pytest.raises(UserError) as info:
        generate_blueprint(args)
    text = str(info.value)
    assert "contains images directly" in text and "PARENT" in text and str(tmp_path) in text


def test_config_file_flattened_and_explicit_flag_wins(tmp_path):
    config_file = tmp_path / "train.toml"
    config_file.write_text('[model]\nlearning_rate = 0.001\n[dataset_arguments]\nkeep_tokens = 2\n'
                           'resolution = "96"\n[other]\nshuffle_caption = true\n', encoding="utf-8")
    args = load_config_file(parser(), ["--config_file", str(config_file), "--keep_tokens", "5"])
    assert args.learning_rate == 0.001
    assert args.keep_tokens == 5
    assert args.resolution == "96"
    assert args.shuffle_caption is True


def test_config_file_unknown_argument_suggests(tmp_path):
    config_file = tmp_path / "train.toml"
    config_file.write_text('[x]\nlearning_rat = 0.1\n', encoding="utf-8")
    with pytest.raises(UserError, match="did you mean `learning_rate`"):
        load_config_file(parser(), ["--config_file", str(config_file)])
    # options of other tools (no near match) are ignored with a warning, the rest still applies
    config_file.write_text('[x]\nxformers = true\nkeep_tokens = 2\n', encoding="utf-8")
    args = load_config_file(parser(), ["--config_file", str(config_file)])
    assert args.keep_tokens == 2 and not hasattr(args, "xformers")
    with pytest.raises(UserError, match="--output_config needs --config_file"):
        load_config_file(parser(), ["--output_config"])


def test_output_config_writes_non_defaults_and_exits(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        load_config_file(parser(), ["--config_file", str(target), "--output_config", "--keep_tokens", "3",
                                    "--flip_aug"])
    assert info.value.code == 0
    text = (tmp_path / "out.toml").read_text(encoding="utf-8")
    assert "keep_tokens = 3" in text and "flip_aug = true" in text
    assert "learning_rate" not in text and "config_file" not in text
    args = load_config_file(parser(), ["--config_file", str(tmp_path / "out.toml")])
    assert args.keep_tokens == 3 and args.flip_aug is True
    with pytest.raises(UserError, match="already exists"):
        load_config_file(parser(), ["--config_file", str(target), "--output_config"])


KOHYA_LORA_EXAMPLE = """
[general]
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
flip_aug = true

[[datasets]]
resolution = 512
batch_size = 4
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64
caption_tag_dropout_rate = 0.05

  [[datasets.subsets]]
  image_dir = "{root}/mychar"
  num_repeats = 10
  class_tokens = "mychar girl"

  [[datasets.subsets]]
  image_dir = "{root}/reg_girl"
  is_reg = true
  num_repeats = 1
  class_tokens = "girl"

[[datasets]]
resolution = [768, 768]
batch_size = 2
enable_bucket = true
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = "{root}/style"
  metadata_file = "{root}/style/meta_lat.json"
"""


def test_reference_lora_example_parses_to_expected_subsets(tmp_path):
    make_dirs(tmp_path, "mychar", "reg_girl", "style")
    (tmp_path / "style" / "meta_lat.json").write_text("{}", encoding="utf-8")
    config_file = tmp_path / "lora.toml"
    config_file.write_text(KOHYA_LORA_EXAMPLE.format(root=tmp_path), encoding="utf-8")
    args = parser(support_dropout=True).parse_args(["--dataset_config", str(config_file)])
    bp = generate_blueprint(args, support_dropout=True)
    first, second = bp.datasets
    assert (first.kind, first.resolution, first.batch_size, first.enable_bucket) == ("dreambooth", (512, 512), 4, True)
    char, reg = first.subsets
    assert (char.num_repeats, char.class_tokens, char.is_reg, char.caption_extension) == (10, "mychar girl", False,
                                                                                          ".txt")
    assert (char.shuffle_caption, char.keep_tokens, char.flip_aug, char.caption_tag_dropout_rate) == (True, 1, True,
                                                                                                      0.05)
    assert (reg.is_reg, reg.num_repeats, reg.class_tokens) == (True, 1, "girl")
    assert (second.kind, second.resolution, second.batch_size, second.bucket_no_upscale) == ("finetuning",
                                                                                            (768, 768), 2, True)
    assert second.subsets[0].metadata_file == str(tmp_path / "style" / "meta_lat.json")
    with pytest.raises(UserError, match="caption_tag_dropout_rate"):
        generate_blueprint(args, support_dropout=False)


def test_reference_ti_example_and_bundled_examples_parse(tmp_path):
    make_dirs(tmp_path, "mychar")
    config_file = tmp_path / "ti.toml"
    config_file.write_text('[general]\ncaption_extension = ".txt"\nshuffle_caption = false\n[[datasets]]\n'
                           f'resolution = 512\nbatch_size = 4\nenable_bucket = true\n[[datasets.subsets]]\n'
                           f'image_dir = "{tmp_path}/mychar"\nnum_repeats = 10\nclass_tokens = "mychar"\n',
                           encoding="utf-8")
    bp = generate_blueprint(parser().parse_args(["--dataset_config", str(config_file)]))
    subset = bp.datasets[0].subsets[0]
    assert (subset.num_repeats, subset.class_tokens, bp.datasets[0].batch_size) == (10, "mychar", 4)

    ti = generate_blueprint(parser().parse_args(["--dataset_config", os.path.join(ROOT, "examples/dataset_ti.toml")]))
    assert ti.datasets[0].subsets[0].image_dir == os.path.join(ROOT, "examples", "data", "object")
    assert ti.datasets[0].resolution == (64, 64)
    lora_args = parser(True).parse_args(["--dataset_config", os.path.join(ROOT, "examples/dataset_lora.toml")])
    lora = generate_blueprint(lora_args, support_dropout=True)
    assert [s.is_reg for s in lora.datasets[0].subsets] == [False, True]
    with pytest.raises(UserError, match="caption_dropout_rate"):
        generate_blueprint(lora_args, support_dropout=False)
