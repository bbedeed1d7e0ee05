"""Prompts -> token ids in 75-token chunks (kohya `--max_token_length`, gen_img `--max_embeddings_multiples`).

Every chunk is 77 ids: BOS + 75 content/end/pad ids + a closing id, and chunks are concatenated, so a
prompt becomes `77 * k` ids (k = 1, 2, 3 for 75 / 150 / 225 tokens). The text encoder encodes each chunk
separately (library/models/text_conditioning.py). Layout as kohya's training code:
- CLIP-L style tokenizers (pad = EOS): the body is content, EOS, EOS...; every chunk closes with EOS.
- OpenCLIP style (pad = "!" = 0, SD2 and SDXL's second tokenizer): body content, EOS, 0...; a chunk closes with
  EOS when its last body position is content, else with the pad; an all-padding chunk starts BOS, EOS.
"""
import numpy as np

from ..errors import UserError
from .prompt_weighting import parse_prompt_weights
from .token_strings import replace_token_string

CHUNK_CONTENT = 75
CHUNK_LENGTH = CHUNK_CONTENT + 2
MAX_TOKEN_LENGTHS = {None: 1, 75: 1, 150: 2, 225: 3}


def chunks_for_max_token_length(max_token_length):
    """kohya's `--max_token_length` (None/75, 150, 225) -> number of 77-id chunks."""
    try:
        return MAX_TOKEN_LENGTHS[max_token_length]
    except KeyError:
        raise UserError(f"--max_token_length must be 75, 150 or 225 (or unset), got {max_token_length}") from None


def content_ids(tokenizer, text):
    """Token ids of `text` without BOS/EOS."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def layout_chunks(ids, num_chunks, bos_id, eos_id, pad_id, weights=None):
    """Content ids (and optional per-token weights) -> (77*num_chunks ids, weights); truncates extra content."""
    body_length = CHUNK_CONTENT * num_chunks
    ids = list(ids)[:body_length]
    token_weights = [1.0] * len(ids) if weights is None else list(weights)[:body_length]
    # Content that fills the whole body loses its EOS; the closing id of the last chunk stands in for it.
    body = (ids + [eos_id] + [pad_id] * body_length)[:body_length]
    body_weights = token_weights + [1.0] * (body_length - len(ids))
    out_ids, out_weights = [], []
    for j in range(num_chunks):
        part = body[j * CHUNK_CONTENT:(j + 1) * CHUNK_CONTENT]
        if pad_id == eos_id or part[-1] not in (eos_id, pad_id):
            closing = eos_id
        else:
            closing = pad_id
        chunk = [bos_id] + part + [closing]
        if pad_id != eos_id and chunk[1] == pad_id:
            chunk[1] = eos_id
        out_ids += chunk
        out_weights += [1.0] + body_weights[j * CHUNK_CONTENT:(j + 1) * CHUNK_CONTENT] + [1.0]
    return out_ids, out_weights


def _special_ids(tokenizer):
    return tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


def tokenize_chunks(tokenizer, texts, num_chunks):
    """Captions -> (B, 77*num_chunks) int32 ids (no weighting syntax: brackets are plain text, as in training)."""
    texts = list(texts)
    batch = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    rows = [layout_chunks(ids, num_chunks, *_special_ids(tokenizer))[0] for ids in batch]
    return np.asarray(rows, dtype=np.int32).reshape(len(texts), CHUNK_LENGTH * num_chunks)


def weighted_content(tokenizer, text):
    """A prompt with (word:1.2) syntax -> (content ids, per-token weights)."""
    fragments, fragment_weights = parse_prompt_weights(text)
    ids, weights = [], []
    for fragment, weight in zip(fragments, fragment_weights):
        fragment_ids = content_ids(tokenizer, fragment) if fragment else []
        ids += fragment_ids
        weights += [weight] * len(fragment_ids)
    return ids, weights


def chunks_needed(tokenizer, texts, max_chunks):
    """Chunks the longest weighted prompt needs (>= 1, <= max_chunks); use one count for cond and uncond."""
    longest = max((len(weighted_content(tokenizer, t)[0]) for t in texts), default=0)
    # As kohya's lpw: a prompt of exactly 75 tokens fits one chunk (its EOS is the chunk's closing id).
    return max(1, min(max_chunks, (longest + CHUNK_CONTENT - 1) // CHUNK_CONTENT))


def tokenize_weighted(tokenizer, texts, num_chunks):
    """Prompts with weighting syntax -> ((B, 77*k) int32 ids, (B, 77*k) float32 weights)."""
    all_ids, all_weights = [], []
    for text in texts:
        ids, weights = weighted_content(tokenizer, text)
        ids, weights = layout_chunks(ids, num_chunks, *_special_ids(tokenizer), weights=weights)
        all_ids.append(ids)
        all_weights.append(weights)
    shape = (len(texts), CHUNK_LENGTH * num_chunks)
    return np.asarray(all_ids, np.int32).reshape(shape), np.asarray(all_weights, np.float32).reshape(shape)


def join_chunk_weights(weights, num_chunks):
    """(B, 77k) per-id weights -> (B, 75k + 2) per context position, joined as the encoder joins chunks."""
    if num_chunks == 1:
        return weights
    parts = [weights[:, :1]]
    for chunk in range(num_chunks):
        start = chunk * CHUNK_LENGTH + 1
        parts.append(weights[:, start:start + CHUNK_CONTENT])
    parts.append(weights[:, -1:])
    return np.concatenate(parts, axis=1)


def tokenize_weighted_captions(tokenizers, captions, num_chunks):
    """kohya's --weighted_captions: the final captions read with (word:1.2) syntax -> ([(B, 77k) int32 ids per
    tokenizer], (B, 75k + 2) float32 weights per context position). One weight row serves both SDXL encoders:
    they share the BPE, so their content tokens and weights are the same."""
    ids, weights = [], None
    for tokenizer in tokenizers:
        tokenizer_ids, tokenizer_weights = tokenize_weighted(tokenizer, list(captions), num_chunks)
        ids.append(tokenizer_ids)
        weights = tokenizer_weights if weights is None else weights
    return ids, join_chunk_weights(weights, num_chunks)


def make_tokenize_fn(tokenizers, max_token_length=None):
    """The `tokenize(captions) -> [ (B, 77*k) int32 per tokenizer ]` callable library/data uses."""
    num_chunks = chunks_for_max_token_length(max_token_length)
    tokenizers = list(tokenizers) if isinstance(tokenizers, (list, tuple)) else [tokenizers]

    def tokenize(captions):
        return [tokenize_chunks(tokenizer, list(captions), num_chunks) for tokenizer in tokenizers]

    return tokenize


def expand_embedding_tokens(text, num_vectors_by_name):
    """Rewrite each loaded embedding name (whole word) as "name name1 ... name{N-1}" (kohya gen_img tokens)."""
    for name, num_vectors in num_vectors_by_name.items():
        text = replace_token_string(text, name, num_vectors)
    return text
