"""CLIP tokenizer built from the bundled vocabulary: ids, vocabulary layout, padding flavours, folders, and an
independent BPE (written here from the openai/open_clip algorithm description) as the reference."""
import functools
import gzip
import hashlib
import json
import os

import pytest

from library.errors import UserError
from library.text import tokenizer as tk


@pytest.fixture(scope="module")
def clip_l():
    return tk.load_clip_tokenizer("eos")


@pytest.fixture(scope="module")
def open_clip():
    return tk.load_clip_tokenizer("!")


def test_bundled_file_is_the_open_clip_vocabulary():
    with open(tk.VOCAB_FILE, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == (
            "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a")


def test_vocabulary_layout():
    vocab, merges = tk.vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["!"] == 0 and vocab['"'] == 1 and vocab["a"] == 64 and vocab["Ā"] == 188 and vocab["Ġ"] == 220
    assert vocab["!</w>"] == 256 and vocab["*</w>"] == 265 and vocab[",</w>"] == 267 and vocab["a</w>"] == 320
    assert vocab["in"] == 512 and vocab["th"] == 513
    assert vocab["photo</w>"] == 1125 and vocab["of</w>"] == 539 and vocab["cat</w>"] == 2368
    assert vocab["toy</w>"] == 5988
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    with gzip.open(tk.VOCAB_FILE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert tuple(lines[1].split()) == merges[0] and tuple(lines[48894].split()) == merges[-1]


def test_check_ids(clip_l, open_clip):
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_l("a photo of a cat")["input_ids"] == expected
    assert open_clip("a photo of a cat")["input_ids"] == expected
    assert clip_l.convert_tokens_to_ids(["photo</w>", "of</w>", "cat</w>", "toy</w>"]) == [1125, 539, 2368, 5988]


def test_padding_flavours(clip_l, open_clip):
    eos_padded = clip_l("a cat", padding="max_length", max_length=77)["input_ids"]
    zero_padded = open_clip("a cat", padding="max_length", max_length=77)["input_ids"]
    assert eos_padded[:4] == zero_padded[:4] == [49406, 320, 2368, 49407]
    assert eos_padded[4:] == [49407] * 73 and zero_padded[4:] == [0] * 73
    assert clip_l.pad_token_id == 49407 and open_clip.pad_token_id == 0
    assert clip_l.model_max_length == open_clip.model_max_length == 77
    with pytest.raises(ValueError):
        tk.load_clip_tokenizer("zero")


def test_truncation_keeps_75_tokens_and_eos(clip_l):
    ids = clip_l(" ".join(["cat"] * 100), truncation=True, max_length=77)["input_ids"]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and ids[1:76] == [2368] * 75


def test_each_call_gives_an_independent_tokenizer():
    first = tk.load_clip_tokenizer()
    first.add_tokens(["zqxtoken"])
    assert len(first) == 49409 and len(tk.load_clip_tokenizer()) == 49408


# ---- independent reference: CLIP's byte-level BPE, written from the algorithm description -------------------

def _byte_symbols():
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    rest = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return table


CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _pieces(text):
    text = " ".join(text.split()).lower()
    pieces, i = [], 0
    while i < len(text):
        ch = text[i]
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            j = i + len(contraction)
        elif ch.isspace():
            i += 1
            continue
        elif ch.isalpha():
            j = i
            while j < len(text) and text[j].isalpha():
                j += 1
        elif ch.isnumeric():
            j = i + 1
        else:
            j = i
            while j < len(text) and not (text[j].isspace() or text[j].isalpha() or text[j].isnumeric()):
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _bpe(word, ranks):
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


@functools.lru_cache(maxsize=1)
def _merge_ranks():
    with gzip.open(tk.VOCAB_FILE, "rt", encoding="utf-8") as f:
        merge_lines = f.read().split("\n")[1:48895]
    return {tuple(line.split()): rank for rank, line in enumerate(merge_lines)}


def _reference_tokens(text):
    ranks = _merge_ranks()
    table = _byte_symbols()
    tokens = []
    for piece in _pieces(text):
        tokens += _bpe("".join(table[b] for b in piece.encode("utf-8")), ranks)
    return tokens


@pytest.mark.parametrize("text", [
    "a photo of a cat",
    "Hello, World!! It's 2024 and we're   testing",
    "an astronaut riding a horse on mars, 4k, highly detailed, trending on artstation",
    "<cat-toy> toy ((masterpiece)), [blurry]:1.2",
    "café naïve façade über",
    "emoji 🐱 and 日本語 text",
    "xylophonists' antidisestablishmentarianism",
])
def test_matches_reference_bpe(clip_l, text):
    ids = clip_l(text, add_special_tokens=False)["input_ids"]
    assert clip_l.convert_ids_to_tokens(ids) == _reference_tokens(text)


# ---- diffusers tokenizer folders --------------------------------------------------------------------------------

@pytest.mark.parametrize("pad", ["eos", "!"])
def test_folder_round_trip_classic_and_tokenizer_json(tmp_path, pad):
    tokenizer = tk.load_clip_tokenizer(pad)
    tk.save_tokenizer_folder(tokenizer, tmp_path)
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["pad_token"] == tokenizer.pad_token
    loaded = tk.load_tokenizer_from_folder(tmp_path)
    text = "a photo of a cat, xylophone 42"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    os.remove(tmp_path / "tokenizer.json")  # classic diffusers layout: vocab.json + merges.txt only
    classic = tk.load_tokenizer_from_folder(tmp_path)
    assert classic(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert classic.pad_token_id == tokenizer.pad_token_id and classic.model_max_length == 77
    assert len(classic) == 49408


def test_saved_folder_leaves_out_added_tokens(tmp_path):
    tokenizer = tk.load_clip_tokenizer("!")
    tokenizer.add_tokens(["zqxtoken"])
    tk.save_tokenizer_folder(tokenizer, tmp_path)
    loaded = tk.load_tokenizer_from_folder(tmp_path)
    assert len(loaded) == 49408 and loaded.pad_token_id == 0


def test_folder_without_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="vocab.json"):
        tk.load_tokenizer_from_folder(tmp_path)


def _added(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def test_old_style_sd2_folder_pads_with_exclamation_mark(tmp_path):
    """Classic diffusers files: AddedToken dicts in tokenizer_config.json, pad "!" in special_tokens_map.json."""
    vocab, merges = tk.vocab_and_merges()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": _added("<|startoftext|>"), "do_lower_case": True,
        "eos_token": _added("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": _added("<|endoftext|>")}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": _added("<|startoftext|>"), "eos_token": _added("<|endoftext|>"), "pad_token": "!",
        "unk_token": _added("<|endoftext|>")}))
    tokenizer = tk.load_tokenizer_from_folder(tmp_path)
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=9)["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0] and tokenizer.model_max_length == 77
