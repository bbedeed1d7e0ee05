"""Captions: reading caption files and kohya's per-sample caption processing.

Order (kohya BaseDataset.process_caption): prefix/suffix -> caption-dropout decision -> wildcard or first line
-> if shuffle / token warm-up / tag dropout is on: split on `caption_separator`, fixed head (`keep_tokens` or the
part before `keep_tokens_separator`) and fixed tail (after its second occurrence), warm-up truncation, shuffle,
tag dropout, rejoin -> `secondary_separator` replaced by `caption_separator` -> the caller's post-processing hook.

Difference from kohya HEAD: kohya rejoins tags with a hard-coded ", " (issue #1304); we rejoin with the configured
separator followed by one space (unless it already ends in whitespace), so "," still gives "a, b" and ";" gives
"a; b"."""
import math
import os
import re

from ..errors import UserError


def read_caption_file(path, enable_wildcard=False):
    """The caption in `path`, or None if the file is missing or empty. UTF-8 only. Without wildcards only the
    first line counts; with wildcards all non-empty lines are kept (one is chosen per sample)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"caption file {path} is not UTF-8 (byte {e.start}); re-save it as UTF-8") from e
    except OSError as e:
        raise UserError(f"cannot read caption file {path}: {e.strerror}") from e
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    return "\n".join(lines) if enable_wildcard else lines[0]


def join_separator(separator):
    return separator if separator.strip() == "" or separator[-1].isspace() else separator + " "


def _expand_wildcards(caption, rng):
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "\u2985", "\u2986"  # placeholders for escaped {{ and }}
    while open_mark in caption or close_mark in caption:
        open_mark += "\u2985"
        close_mark += "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def _split(text, separator):
    return [t.strip() for t in text.split(separator) if t.strip()]


def warmup_steps(subset, max_train_steps):
    """token_warmup_step < 1 is a fraction of max_train_steps (kohya)."""
    step = subset.token_warmup_step
    if step < 1:
        return math.floor(step * (max_train_steps or 0))
    return step


def process_caption(subset, caption, rng, epoch=1, step=0, max_train_steps=None):
    """Apply kohya's caption pipeline for one sample. `rng` is a random.Random; `epoch` counts from 1."""
    caption = caption or ""
    if subset.caption_prefix:
        caption = subset.caption_prefix + " " + caption
    if subset.caption_suffix:
        caption = caption + " " + subset.caption_suffix

    dropped = subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate
    every = subset.caption_dropout_every_n_epochs
    dropped = dropped or (every > 0 and epoch % every == 0)
    if dropped:
        return ""

    caption = _expand_wildcards(caption, rng) if subset.enable_wildcard else caption.split("\n")[0]
    warmup = warmup_steps(subset, max_train_steps)
    if subset.shuffle_caption or warmup > 0 or subset.caption_tag_dropout_rate > 0:
        sep = subset.caption_separator
        fixed, flex, fixed_tail = [], [], []
        keep_sep = subset.keep_tokens_separator
        if keep_sep and keep_sep in caption:
            fixed_part, flex_part = caption.split(keep_sep, 1)
            if keep_sep in flex_part:
                flex_part, tail_part = flex_part.split(keep_sep, 1)
                fixed_tail = _split(tail_part, sep)
            fixed, flex = _split(fixed_part, sep), _split(flex_part, sep)
        else:
            tokens = [t.strip() for t in caption.strip().split(sep)]
            flex = tokens[:]
            if subset.keep_tokens > 0:
                fixed, flex = tokens[:subset.keep_tokens], tokens[subset.keep_tokens:]
        if warmup and step < warmup:
            count = math.floor(step * ((len(flex) - subset.token_warmup_min) / warmup)) + subset.token_warmup_min
            flex = flex[:count]
        if subset.shuffle_caption:
            rng.shuffle(flex)
        if subset.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= subset.caption_tag_dropout_rate]
        caption = join_separator(sep).join(fixed + flex + fixed_tail)
    if subset.secondary_separator:
        caption = caption.replace(subset.secondary_separator, subset.caption_separator)
    return caption
