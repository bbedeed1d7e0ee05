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


def _byte_order():
    """Byte values in vocabulary order: printable bytes first, then the rest."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    return printable, [b for b in range(256) if b not in set(printable)]


def byte_symbols():
    """The 256 printable stand-ins for bytes, in vocabulary order (printable bytes first, then the rest)."""
    printable, others = _byte_order()
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def token_text(token):
    """A vocabulary entry as text: its byte stand-ins decoded as UTF-8 (`</w>`, the end of a word, kept)."""
    printable, others = _byte_order()
    to_byte = dict(zip(byte_symbols(), printable + others))
    word_end = token.endswith("</w>")
    body = token[: -len("</w>")] if word_end else token
    if body in (BOS_TOKEN, EOS_TOKEN) or any(c not in to_byte for c in body):
        return token
    return bytes(to_byte[c] for c in body).decode("utf-8", errors="replace") + ("</w>" if word_end else "")


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
    """A diffusers `tokenizer/` or `tokenizer_2/` folder: vocab.json + merges.txt (classic layout) or a
    tokenizer.json (what transformers 5 writes), with its special tokens and padding."""
    from transformers import CLIPTokenizer

    path = os.fspath(path)
    has_classic = all(os.path.isfile(os.path.join(path, name)) for name in ("vocab.json", "merges.txt"))
    if not has_classic and not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise UserError(f"tokenizer folder {path} has neither vocab.json + merges.txt nor tokenizer.json; expected "
                        "a diffusers tokenizer folder")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"cannot load the tokenizer in {path}: {e}") from e
    if tokenizer.model_max_length > 10**6:  # config without model_max_length: CLIP's context
        tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer


def save_tokenizer_folder(tokenizer, path):
    """Write a diffusers tokenizer folder readable by old and new transformers: vocab.json, merges.txt,
    special_tokens_map.json, tokenizer_config.json (classic layout) and tokenizer.json. Added tokens (TI token
    strings) are left out of every file, so the folder matches an unextended text encoder."""
    from transformers import CLIPTokenizer

    from ..fileio import atomic_write

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = {token: index for token, index in model["vocab"].items() if index < VOCAB_SIZE}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = {"bos_token": str(tokenizer.bos_token), "eos_token": str(tokenizer.eos_token),
               "pad_token": str(tokenizer.pad_token), "unk_token": str(tokenizer.unk_token)}
    base = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                         model_max_length=tokenizer.model_max_length, **special)
    os.makedirs(path, exist_ok=True)
    base.save_pretrained(path)  # tokenizer.json + tokenizer_config.json
    config = dict(special, model_max_length=tokenizer.model_max_length, do_lower_case=True,
                  tokenizer_class="CLIPTokenizer")
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False),
             "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
             "special_tokens_map.json": json.dumps(special, indent=2),
             "tokenizer_config.json": json.dumps(config, indent=2)}
    for name, text in files.items():
        with atomic_write(os.path.join(path, name)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)


def pad_id(tokenizer):
    """Padding id of a tokenizer: 49407 for CLIP-L style, 0 for OpenCLIP style."""
    return tokenizer.pad_token_id
