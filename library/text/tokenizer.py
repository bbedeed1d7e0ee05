"""The CLIP BPE tokenizer every SD text encoder uses, built from the bundled `bpe_simple_vocab_16e6.txt.gz`.

The vocabulary (49,408 entries) is derived from the merge list exactly as openai/CLIP and open_clip do:
256 byte symbols, the same symbols with the end-of-word mark, one entry per used merge, then the two specials.
The tokenizer object itself is a transformers `CLIPTokenizer`, so encoding matches what diffusers and kohya use.
"""
import functools
import gzip
import json
import os

from ..errors import UserError

VOCAB_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                          "bpe_simple_vocab_16e6.txt.gz")
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Merges used by CLIP: 49152 BPE entries minus 256 byte symbols minus the 2 specials.
NUM_MERGES = 49152 - 256 - 2
PAD_FLAVOURS = {"eos": EOS_TOKEN, "!": "!"}


def byte_symbols():
    """The 256 printable stand-ins for bytes, in vocabulary order (printable bytes first, then the rest)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols = [chr(b) for b in printable]
    others = [b for b in range(256) if b not in set(printable)]
    symbols += [chr(256 + n) for n in range(len(others))]
    return symbols


@functools.lru_cache(maxsize=1)
def vocab_and_merges():
    """(token -> id dict, list of merge pairs) read from the bundled file; cached for the process."""
    try:
        with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise UserError(f"cannot read the bundled CLIP vocabulary {VOCAB_FILE}: {e}; reinstall the package") from e
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise UserError(f"the bundled CLIP vocabulary {VOCAB_FILE} is damaged: built {len(vocab)} entries, "
                        f"expected {VOCAB_SIZE}; reinstall the package")
    return vocab, merges


def load_clip_tokenizer(pad="eos"):
    """A fresh CLIP tokenizer (callers may add tokens to it).

    pad="eos": CLIP-L style (SD1 `tokenizer`, SDXL `tokenizer`), padding with <|endoftext|> = 49407.
    pad="!":   OpenCLIP style (SD2 `tokenizer`, SDXL `tokenizer_2`), padding with "!" = id 0.
    """
    from transformers import CLIPTokenizer

    if pad not in PAD_FLAVOURS:
        raise ValueError(f"pad must be one of {sorted(PAD_FLAVOURS)}, got {pad!r}")
    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=PAD_FLAVOURS[pad],
                         model_max_length=MODEL_MAX_LENGTH)


def load_tokenizer_from_folder(path):
    """A diffusers `tokenizer/` or `tokenizer_2/` folder (vocab.json + merges.txt + special tokens)."""
    from transformers import CLIPTokenizer

    path = os.fspath(path)
    missing = [name for name in ("vocab.json", "merges.txt") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise UserError(f"tokenizer folder {path} lacks {', '.join(missing)}; expected a diffusers tokenizer "
                        "folder with vocab.json and merges.txt")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError(f"cannot load the tokenizer in {path}: {e}") from e
    if tokenizer.model_max_length > 10**6:  # config without model_max_length: CLIP's context
        tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def pad_id(tokenizer):
    """Padding id of a tokenizer: 49407 for CLIP-L style, 0 for OpenCLIP style."""
    return tokenizer.pad_token_id
