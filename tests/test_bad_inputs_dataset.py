"""Bad dataset configs, folders, images and captions: the trainers stop with one message naming the file /
TOML path and what was expected, exit 2, no traceback, nothing saved. Run in-process (no model compile)."""
import os

import pytest

import train_network
import train_textual_inversion
from bad_inputs_helpers import dataset_toml, expect_failure, write_images, write_text
from library.checkpoints import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return ensure_tiny_checkpoint("tiny-sd15", str(tmp_path_factory.mktemp("ckpt") / "tiny-sd15.safetensors"))


@pytest.fixture
def images(tmp_path):
    folder = str(tmp_path / "images")
    write_images(folder, caption="a photo of mytoy")
    return folder


def ti_args(ckpt, config, out, *extra):
    return ["--pretrained_model_name_or_path", ckpt, "--dataset_config", config, "--token_string", "mytoy",
            "--init_word", "toy", "--output_dir", out, "--max_train_steps", "1", *extra]


def lora_args(ckpt, config, out, *extra):
    return ["--pretrained_model_name_or_path", ckpt, "--dataset_config", config, "--output_dir", out,
            "--max_train_steps", "1", *extra]


def fail_ti(sd15, config, tmp_path, capfd, names, *extra):
    out = str(tmp_path / "out")
    return expect_failure(train_textual_inversion, ti_args(sd15, config, out, *extra), capfd, names, out)


def fail_lora(sd15, config, tmp_path, capfd, names, *extra):
    out = str(tmp_path / "out")
    return expect_failure(train_network, lora_args(sd15, config, out, *extra), capfd, names, out)


def test_toml_syntax_error_names_line_and_column(sd15, images, tmp_path, capfd):
    config = write_text(tmp_path / "bad.toml", f"""
        [general]
        resolution = 64
        [[datasets]]
          [[datasets.subsets]]
          image_dir = '{images}'
          num_repeats = = 2
        """)
    message = fail_ti(sd15, config, tmp_path, capfd, [config, "TOML syntax error", "line 6", "column"])
    assert "num_repeats = = 2" in message  # the offending line is quoted


def test_unknown_key_suggests_the_close_one(sd15, images, tmp_path, capfd):
    config = dataset_toml(tmp_path / "typo.toml", images, extra_subset="num_repeat = 3")
    fail_lora(sd15, config, tmp_path, capfd,
              [config, "datasets[0].subsets[0].num_repeat", "unknown key", "did you mean `num_repeats`?"])


def test_wrong_type_names_the_toml_path(sd15, images, tmp_path, capfd):
    config = dataset_toml(tmp_path / "type.toml", images, extra_subset='shuffle_caption = "yes"')
    fail_ti(sd15, config, tmp_path, capfd, [config, "datasets[0].subsets[0].shuffle_caption", "expected true or false"])


def test_missing_image_dir(sd15, tmp_path, capfd):
    config = write_text(tmp_path / "noimage.toml", """
        [general]
        resolution = 64
        [[datasets]]
          [[datasets.subsets]]
          num_repeats = 2
        """)
    fail_ti(sd15, config, tmp_path, capfd, [config, "datasets[0].subsets[0]", "image_dir"])


def test_image_dir_that_does_not_exist(sd15, tmp_path, capfd):
    config = dataset_toml(tmp_path / "gone.toml", str(tmp_path / "nowhere"))
    fail_lora(sd15, config, tmp_path, capfd, ["datasets[0].subsets[0].image_dir", "nowhere", "not found"])


def test_image_dir_without_images(sd15, tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    config = dataset_toml(tmp_path / "empty.toml", str(empty))
    fail_ti(sd15, config, tmp_path, capfd, [str(empty), "no images", ".png"])


def test_folder_mode_parent_without_repeat_folders(sd15, images, tmp_path, capfd):
    out = str(tmp_path / "out")
    argv = ["--pretrained_model_name_or_path", sd15, "--train_data_dir", images, "--resolution", "64",
            "--output_dir", out, "--max_train_steps", "1"]
    expect_failure(train_network, argv, capfd, ["--train_data_dir", images, "<repeats>_<class tokens>"], out)


def test_corrupt_image(sd15, images, tmp_path, capfd):
    bad = os.path.join(images, "broken.png")
    with open(bad, "wb") as f:
        f.write(b"this is not a png at all")
    config = dataset_toml(tmp_path / "c.toml", images)
    fail_ti(sd15, config, tmp_path, capfd, [bad, "cannot read image"])


def test_truncated_image(sd15, images, tmp_path, capfd):
    full = write_images(str(tmp_path / "big"), count=1, size=(64, 64))[0]
    data = open(full, "rb").read()
    bad = os.path.join(images, "truncated.png")
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # the header (size) reads fine, the pixels do not
    config = dataset_toml(tmp_path / "t.toml", images)
    fail_lora(sd15, config, tmp_path, capfd, [bad, "image"])


def test_zero_byte_caption(sd15, images, tmp_path, capfd):
    empty_caption = os.path.join(images, "img1.txt")
    open(empty_caption, "wb").close()
    config = dataset_toml(tmp_path / "z.toml", images)
    fail_ti(sd15, config, tmp_path, capfd, [empty_caption, "empty"])


def test_non_utf8_caption(sd15, images, tmp_path, capfd):
    latin = os.path.join(images, "img0.txt")
    with open(latin, "wb") as f:
        f.write("a photo of mytoy, caf\u00e9".encode("latin-1"))
    config = dataset_toml(tmp_path / "u.toml", images)
    fail_lora(sd15, config, tmp_path, capfd, [latin, "not UTF-8"])


def test_captions_without_the_token_string_and_no_template(sd15, tmp_path, capfd):
    folder = str(tmp_path / "plain")
    write_images(folder, caption="a photo of a toy")
    config = dataset_toml(tmp_path / "p.toml", folder)
    fail_ti(sd15, config, tmp_path, capfd, ["'mytoy'", "no caption", "--use_object_template"])


def test_resolution_not_divisible_by_the_model(sd15, images, tmp_path, capfd):
    config = dataset_toml(tmp_path / "r.toml", images, resolution=72)
    fail_ti(sd15, config, tmp_path, capfd, [config, "resolution", "72", "16"])


def test_bucket_step_not_divisible_by_the_model(sd15, images, tmp_path, capfd):
    config = dataset_toml(tmp_path / "b.toml", images,
                          extra_general="enable_bucket = true\nbucket_reso_steps = 24\nmin_bucket_reso = 48\n"
                                        "max_bucket_reso = 96")
    fail_lora(sd15, config, tmp_path, capfd, [config, "bucket_reso_steps", "24", "16"])


def test_min_bucket_reso_above_max(sd15, images, tmp_path, capfd):
    out = str(tmp_path / "out")
    config = dataset_toml(tmp_path / "m.toml", images)
    argv = ti_args(sd15, config, out, "--enable_bucket", "--min_bucket_reso", "128", "--max_bucket_reso", "64")
    expect_failure(train_textual_inversion, argv, capfd, ["min_bucket_reso 128", "max_bucket_reso 64"], out)


def test_batch_size_zero(sd15, images, tmp_path, capfd):
    config = write_text(tmp_path / "bs.toml", f"""
        [general]
        resolution = 64
        [[datasets]]
        batch_size = 0
          [[datasets.subsets]]
          image_dir = '{images}'
        """)
    fail_lora(sd15, config, tmp_path, capfd, [config, "batch_size", ">= 1"])


def test_config_file_option_typo(sd15, images, tmp_path, capfd):
    dataset = dataset_toml(tmp_path / "d.toml", images)
    options = write_text(tmp_path / "args.toml", """
        [training]
        learning_rat = 0.001
        """)
    fail_lora(sd15, dataset, tmp_path, capfd, [options, "learning_rat", "did you mean `learning_rate`?"],
              "--config_file", options)


def test_config_file_value_of_the_wrong_type(sd15, images, tmp_path, capfd):
    dataset = dataset_toml(tmp_path / "d.toml", images)
    options = write_text(tmp_path / "args.toml", """
        [training]
        max_train_steps = "many"
        """)
    fail_lora(sd15, dataset, tmp_path, capfd, [options, "max_train_steps", "'many'"], "--config_file", options)


def test_config_file_flag_that_is_not_a_boolean(sd15, images, tmp_path, capfd):
    dataset = dataset_toml(tmp_path / "d.toml", images)
    options = write_text(tmp_path / "args.toml", """
        [dataset]
        cache_latents = "yes"
        """)
    fail_ti(sd15, dataset, tmp_path, capfd, [options, "cache_latents", "expected true or false"],
            "--config_file", options)
