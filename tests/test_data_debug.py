"""--debug_dataset output on the bundled example dataset."""
import argparse
import io
import os
import re

import numpy as np

from library.config import add_dataset_arguments
from library.data import build_dataset_group, print_debug_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokenize_with_new_token(captions):
    """Dummy tokenizer: 'mytoy' -> 49408, any other word -> 320."""
    ids = np.full((len(captions), 77), 49407, np.int32)
    for row, caption in enumerate(captions):
        words = [49408 if w == "mytoy" else 320 for w in caption.split()]
        ids[row, : len(words) + 2] = [49406] + words + [49407]
    return [ids]


def example_group():
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser, support_dropout=True)
    args = parser.parse_args(["--dataset_config", os.path.join(ROOT, "examples", "dataset_lora.toml"),
                              "--prior_loss_weight", "0.5"])
    return build_dataset_group(args, tokenize=tokenize_with_new_token, seed=0, support_dropout=True)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_non_interactive_prints_table_batches_and_new_ids():
    group = example_group()
    out = io.StringIO()
    shown = print_debug_dataset(group, max_batches=3, out=out, stdin=io.StringIO())
    text = out.getvalue()
    assert shown == 3
    assert f"Total dataset length (steps): {len(group)}" in text
    assert re.search(r"bucket 0: resolution \(64, 64\), count: 24", text)
    assert "mean ar error" in text
    assert len(re.findall(r"^steps: ", text, re.M)) == 3
    assert re.search(r'caption: "[^"]*mytoy[^"]*"', text)
    assert "new token ids: [49408]" in text
    for key in group[0]["image_keys"]:
        assert key in text


def test_default_batch_limit_without_terminal_and_interactive_quit():
    group = example_group()
    out = io.StringIO()
    assert print_debug_dataset(group, out=out, stdin=io.StringIO()) == min(8, len(group))
    item_lines = [line for line in out.getvalue().splitlines() if ", size: (" in line]
    reg_lines = [line for line in item_lines if "/data/reg/" in line]
    object_lines = [line for line in item_lines if "/data/object/" in line]
    assert reg_lines and object_lines and len(reg_lines) + len(object_lines) == len(item_lines)
    assert all("loss weight: 0.5" in line for line in reg_lines)
    assert all("loss weight: 1.0" in line for line in object_lines)
    out = io.StringIO()
    assert print_debug_dataset(group, out=out, stdin=FakeTerminal("s\nq\n")) == 2
    assert "Esc quit" in out.getvalue()
