"""The real scripts, as a user starts them: bad input ends with exit code 2, one `error:` line on stderr and
no traceback (the in-process suites check the messages in detail; this proves the end-to-end wiring)."""
import os
import subprocess
import sys

import pytest

from bad_inputs_helpers import dataset_toml, leftover_files, write_images, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *argv):
    env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1")
    env.pop("SDMS_VERBOSE", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_clean_failure(result, *names):
    code, out, err = result
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for name in names:
        assert name in err[err.index("error:"):], err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sub")
    images = str(root / "images")
    write_images(images, caption="a photo of mytoy")
    return root, images


def test_textual_inversion_toml_syntax_error(dataset, tmp_path):
    _, images = dataset
    config = write_text(tmp_path / "bad.toml", f"""
        [general]
        resolution = 64
        [[datasets]]
          [[datasets.subsets]]
          image_dir = '{images}
        """)
    out = tmp_path / "out"
    result = run_script("train_textual_inversion.py", "--pretrained_model_name_or_path", "tiny-sd15",
                        "--dataset_config", config, "--token_string", "mytoy", "--output_dir", out)
    assert_clean_failure(result, config, "line 5")
    assert leftover_files(out) == []


def test_train_network_refuses_a_pickle_checkpoint(dataset, tmp_path):
    root, images = dataset
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")  # an (empty) pickled dict
    out = tmp_path / "out"
    result = run_script("train_network.py", "--pretrained_model_name_or_path", ckpt,
                        "--dataset_config", dataset_toml(tmp_path / "d.toml", images), "--output_dir", out)
    assert_clean_failure(result, str(ckpt), "--allow_unsafe_pickle")
    assert leftover_files(out) == []


def test_gen_img_unknown_sampler(tmp_path):
    out = tmp_path / "images"
    result = run_script("gen_img.py", "--ckpt", "models/tiny-sd15.safetensors", "--prompt", "a toy",
                        "--sampler", "nope", "--outdir", out)
    assert_clean_failure(result, "nope")
    assert leftover_files(out) == []


def test_argparse_type_error_is_one_message(tmp_path):
    result = run_script("train_network.py", "--learning_rate", "fast", "--output_dir", tmp_path / "out")
    assert_clean_failure(result, "--learning_rate", "'fast'")
