"""Textual-inversion token strings: adding `T, T1 ... T{N-1}` to the tokenizers, initial ids, caption rewriting.

Differences from kohya (deliberate):
- `replace_token_string` rewrites T only as a WHOLE WORD (case-insensitive, as the tokenizer lowercases).
  kohya does a plain substring replace, so with T="cat" the word "catalog" became "cat cat1 cat2alog"
  (bmaltais/kohya_ss#2801). Here T must stand alone: not preceded or followed by a letter, digit or "_".
- The added tokens are registered as single words, so the tokenizer also matches them only as whole words
  ("mytoks" is not "mytok" + "s").
- A T that the vocabulary already encodes as ONE known token (e.g. "cat", "sks") is refused: the new vector
  would silently shadow a word the model knows.
"""
import re

from ..errors import UserError
from .templates import get_templates
from .tokenizer import VOCAB_SIZE


def token_strings(token_string, num_vectors):
    """[T, T1, ..., T{N-1}]."""
    return [token_string] + [f"{token_string}{i}" for i in range(1, num_vectors)]


def _as_list(tokenizers):
    return list(tokenizers) if isinstance(tokenizers, (list, tuple)) else [tokenizers]


def _check_new(tokenizer, token, option):
    added = {t.lower() for t in tokenizer.get_added_vocab()}
    if token.lower() in added:
        raise UserError(f"{option}: {token!r} is already an added token of the tokenizer; "
                        "choose another token string")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) == 1 and ids[0] < VOCAB_SIZE:
        raise UserError(f"{option}: the CLIP vocabulary already has {token!r} as one token (id {ids[0]}); "
                        "training it would overwrite a word the model knows. Choose a new word, e.g. "
                        f"'{token}-ti' or '<{token}>'")


def add_token_string(tokenizers, token_string, num_vectors, option="--token_string"):
    """Add T, T1 .. T{N-1} to every tokenizer (same consecutive ids 49408.. on each); returns the ids.

    `option` names the user's option in messages (gen_img passes "--textual_inversion_embeddings", where T is
    an embedding file's stem). Nothing is added unless every tokenizer accepts every token.
    """
    from transformers import AddedToken

    if not token_string or not token_string.strip() or re.search(r"\s", token_string):
        raise UserError(f"{option} must be one word without spaces, got {token_string!r}")
    if num_vectors < 1:
        raise UserError(f"--num_vectors_per_token must be >= 1, got {num_vectors}")
    tokens = token_strings(token_string, num_vectors)
    tokenizers = _as_list(tokenizers)
    for tokenizer in tokenizers:
        for token in tokens:
            _check_new(tokenizer, token, option)
    result = None
    for tokenizer in tokenizers:
        start = len(tokenizer)
        added = tokenizer.add_tokens([AddedToken(t, single_word=True) for t in tokens])
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if added != num_vectors or ids != list(range(start, start + num_vectors)):
            raise UserError(f"{option}: could not add {tokens} as consecutive new tokens "
                            f"(added {added}, ids {ids})")
        if result is not None and ids != result:
            raise UserError(f"{option}: the tokenizers gave different ids to {tokens}: {result} vs {ids}; "
                            "they must have the same vocabulary size")
        result = ids
    return result


def init_ids(tokenizer, init_word, num_vectors):
    """Ids whose embeddings initialise the N new rows: the init word's ids cycled over N (as kohya does)."""
    if init_word is None or not init_word.strip():
        raise UserError("--init_word is empty; give a word the model knows (e.g. 'toy') or leave the option out")
    ids = tokenizer.encode(init_word, add_special_tokens=False)
    if not ids:
        raise UserError(f"--init_word {init_word!r} encodes to no tokens; give a word the model knows")
    unknown = [i for i in ids if i >= VOCAB_SIZE]
    if unknown:
        raise UserError(f"--init_word {init_word!r} contains newly added tokens (ids {unknown}), not words of the "
                        "CLIP vocabulary; use a known word such as the class of the object")
    return [ids[i % len(ids)] for i in range(num_vectors)]


def _whole_word(token_string):
    return re.compile(r"(?<![\w])" + re.escape(token_string) + r"(?![\w])", re.IGNORECASE)


def replace_token_string(text, token_string, num_vectors):
    """Rewrite every whole-word T in `text` as "T T1 ... T{N-1}" (N=1: unchanged).

    Unlike kohya's substring replace, "Tx" or "xT" are left alone, and an already expanded "T T1 ..." is not
    expanded again.
    """
    if num_vectors <= 1 or not text:
        return text
    replacement = " ".join(token_strings(token_string, num_vectors))
    already = re.compile(r"\s+" + re.escape(f"{token_string}1") + r"(?![\w])", re.IGNORECASE)

    def expand(match):
        if already.match(text, match.end()):
            return match.group(0)
        return replacement

    return _whole_word(token_string).sub(expand, text)


def captions_mention_token(captions, token_string):
    """True if at least one caption contains T as a whole word (False: TI would learn nothing)."""
    pattern = _whole_word(token_string)
    return any(pattern.search(caption or "") for caption in captions)


def missing_token_warning(captions, token_string, template=None):
    """kohya's most common silent failure: no caption names T and no template is used. Returns the warning
    text to print, or None when all is well."""
    if template is not None or captions_mention_token(captions, token_string):
        return None
    return (f"no caption contains the token string {token_string!r} as a word, so textual inversion would learn "
            f"nothing: put it in the captions (e.g. 'a photo of {token_string}') or use --use_object_template / "
            "--use_style_template / --learnable_property")


def _pick(rng, count):
    if hasattr(rng, "integers"):  # numpy Generator
        return int(rng.integers(count))
    return rng.randrange(count)  # random.Random


def caption_transform(token_string, num_vectors, template=None):
    """The callable `fn(caption, rng) -> caption` the dataset applies to every caption.

    template=None: keep the caption, expanding T to N tokens. "object"/"style"/"face": ignore the caption and
    pick a template with the dataset's rng (numpy Generator or random.Random), as kohya's template flags do.
    """
    placeholder = " ".join(token_strings(token_string, num_vectors))
    if template is None:
        def transform(caption, rng=None):
            return replace_token_string(caption, token_string, num_vectors)
    else:
        templates = get_templates(template)

        def transform(caption, rng):
            return templates[_pick(rng, len(templates))].format(placeholder)
    return transform
