"""kohya's caption pipeline: order of steps, separators, wildcards, dropout, warm-up, caption files."""
import random

import pytest

from library.config.params import SubsetParams
from library.data.captions import process_caption, read_caption_file
from library.errors import UserError

TAGS = "mytoy, red, robot, antenna, table, indoors"


def run(caption, seed=0, **kwargs):
    options = {k: kwargs.pop(k) for k in ("epoch", "step", "max_train_steps") if k in kwargs}
    return process_caption(SubsetParams(**kwargs), caption, random.Random(seed), **options)


def test_no_processing_keeps_caption_and_first_line():
    assert run("a photo of mytoy\nsecond line") == "a photo of mytoy"


def test_shuffle_under_fixed_seed_matches_an_independent_shuffle():
    flex = [t.strip() for t in TAGS.split(",")][1:]
    expected = flex[:]
    random.Random(7).shuffle(expected)
    out = run(TAGS, seed=7, shuffle_caption=True, keep_tokens=1)
    assert out == ", ".join(["mytoy"] + expected)
    assert out == run(TAGS, seed=7, shuffle_caption=True, keep_tokens=1)
    outputs = {run(TAGS, seed=s, shuffle_caption=True, keep_tokens=1) for s in range(10)}
    assert len(outputs) > 1 and all(o.startswith("mytoy, ") for o in outputs)


def test_prefix_and_suffix_come_before_shuffling():
    out = run("a, b, c", seed=1, caption_prefix="mytoy", caption_suffix="end", shuffle_caption=True, keep_tokens=1)
    assert out.startswith("mytoy a, ")
    assert sorted(out.split(", ")) == sorted(["mytoy a", "b", "c end"])


def test_rejoin_uses_configured_separator():
    out = run("x; y; z", seed=2, shuffle_caption=True, caption_separator=";")
    assert sorted(out.split("; ")) == ["x", "y", "z"] and ", " not in out


def test_keep_tokens_separator_fixes_head_and_tail():
    caption = "mytoy, red ||| a, b, c, d ||| masterpiece, best"
    for seed in range(5):
        out = run(caption, seed=seed, shuffle_caption=True, keep_tokens_separator="|||")
        tags = out.split(", ")
        assert tags[:2] == ["mytoy", "red"] and tags[-2:] == ["masterpiece", "best"]
        assert sorted(tags[2:-2]) == ["a", "b", "c", "d"]


def test_secondary_separator_keeps_groups_together():
    for seed in range(5):
        out = run("a, b;;;c, d", seed=seed, shuffle_caption=True, secondary_separator=";;;")
        assert "b,c" in out and ";;;" not in out


def test_wildcards_and_escapes():
    seen = {run("a {red|blue} toy {{literal}}", seed=s, enable_wildcard=True) for s in range(20)}
    assert seen == {"a red toy {literal}", "a blue toy {literal}"}
    lines = {run("first\nsecond", seed=s, enable_wildcard=True) for s in range(20)}
    assert lines == {"first", "second"}


def test_caption_dropout_rate_and_every_n_epochs():
    assert run(TAGS, caption_dropout_rate=1.0) == ""
    assert run(TAGS, caption_dropout_every_n_epochs=2, epoch=2) == ""
    assert run(TAGS, caption_dropout_every_n_epochs=2, epoch=3) == TAGS


def test_tag_dropout_keeps_fixed_tokens():
    assert run(TAGS, caption_tag_dropout_rate=1.0, keep_tokens=1) == "mytoy"
    kept = run(TAGS, seed=3, caption_tag_dropout_rate=0.5, keep_tokens=1).split(", ")
    assert kept[0] == "mytoy" and set(kept[1:]) <= set(TAGS.split(", ")[1:])


def test_token_warmup_truncates_flex_tags():
    flex_count = 5
    assert run(TAGS, token_warmup_step=10, keep_tokens=1, step=0) == "mytoy, red"
    out = run(TAGS, token_warmup_step=10, keep_tokens=1, step=6).split(", ")
    assert len(out) == 1 + (6 * (flex_count - 1)) // 10 + 1
    assert run(TAGS, token_warmup_step=10, keep_tokens=1, step=10) == TAGS
    # a fraction of max_train_steps: 0.5 * 20 = 10 warm-up steps
    assert run(TAGS, token_warmup_step=0.5, keep_tokens=1, step=0, max_train_steps=20) == "mytoy, red"


def test_read_caption_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffa photo of mytoy\nsecond\n".encode("utf-8"))
    assert read_caption_file(str(path)) == "a photo of mytoy"
    assert read_caption_file(str(path), enable_wildcard=True) == "a photo of mytoy\nsecond"
    empty = tmp_path / "b.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert read_caption_file(str(empty)) is None
    assert read_caption_file(str(tmp_path / "missing.txt")) is None
    latin = tmp_path / "c.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError) as info:
        read_caption_file(str(latin))
    assert str(latin) in str(info.value) and "UTF-8" in str(info.value)
