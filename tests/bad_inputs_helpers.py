"""Shared by tests/test_bad_inputs_*.py: run a CLI in-process with bad input and check that it fails the way a
user should see it: exit code 2, one `error:` line naming what is wrong, no traceback, no half-written file."""
import os
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from library.errors import run_cli

# Files a failed run must never leave behind (finished or partial saves, atomic_write's temporaries).
SAVE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".tmp", ".png", ".npz", ".json", ".toml")


def leftover_files(folder):
    """Every file under `folder` (relative paths); an absent folder has none."""
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(found)


def expect_failure(module, argv, capfd, names, output_dir=None, code=2):
    """Run `module.main(argv)` through run_cli; assert the exit code, that stderr has exactly one `error:`
    message containing every string in `names` (case-sensitive) and no traceback, and that `output_dir`
    holds no saved or temporary file. Returns the error message."""
    capfd.readouterr()  # drop earlier output (model build logs of fixtures)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, argv=[str(a) for a in argv])
    out, err = capfd.readouterr()
    assert exit_info.value.code == code, f"exit code {exit_info.value.code}; stderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, f"expected one error message, got:\n{err}"
    message = err[err.index("error:"):]
    for name in names:
        assert name in message, f"{name!r} not named in:\n{message}"
    if output_dir is not None:
        left = [f for f in leftover_files(output_dir) if f.endswith(SAVE_SUFFIXES) or ".tmp" in f]
        assert not left, f"files left in {output_dir}: {left}"
    return message


def write_images(folder, count=2, size=(64, 64), caption=None, caption_ext=".txt"):
    """`count` small random PNGs (and captions when given) in `folder`; returns the image paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        if caption is not None:
            with open(os.path.join(folder, f"img{i}{caption_ext}"), "w", encoding="utf-8") as f:
                f.write(caption)
        paths.append(path)
    return paths


def write_text(path, text):
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text).lstrip())
    return os.fspath(path)


def dataset_toml(path, image_dir, resolution=64, extra_general="", extra_subset=""):
    """A minimal valid dataset config (one DreamBooth subset, .txt captions); extras are appended as TOML lines."""
    return write_text(path, f"""
        [general]
        resolution = {resolution}
        caption_extension = ".txt"
        {extra_general}

        [[datasets]]
        batch_size = 1

          [[datasets.subsets]]
          image_dir = '{image_dir}'
          num_repeats = 1
          {extra_subset}
        """)


def python():
    return sys.executable
