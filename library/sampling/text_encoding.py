"""Prompts -> UNet conditioning for generation: weighting syntax, long prompts, SDXL pooled/zero negatives.

Weights `(word:1.2)`, `(word)`, `[word]` scale each token's context vector, then the whole context is
rescaled so its mean over positions and features is what it was before weighting (kohya/A1111 lpw,
emb_normalize_mode "original"). Prompts longer than 75 tokens are split into up to `max_chunks` chunks of 75
(gen_img's --max_embeddings_multiples); all prompts of one call share one chunk count so cond and uncond
contexts have the same length.
"""
import numpy as np

from ..models.text_conditioning import encode_prompts
from ..text.chunking import chunks_needed, join_chunk_weights, tokenize_weighted
from .compiled import run_graph

DEFAULT_MAX_CHUNKS = 3


def apply_weights(context, weights):
    """Scale each position by its weight, then restore each prompt's mean (no-op when all weights are 1)."""
    if np.all(weights == 1.0):
        return context
    before = context.mean(axis=(1, 2), keepdims=True)
    weighted = context * weights[:, :, None]
    after = weighted.mean(axis=(1, 2), keepdims=True)
    return (weighted * (before / after)).astype(np.float32)


def count_chunks(bundle, texts, max_chunks=DEFAULT_MAX_CHUNKS):
    return chunks_needed(bundle.tokenizers[0], list(texts), max_chunks)


def encode_texts(bundle, texts, num_chunks, clip_skip=None):
    """(context (B, 75k+2, ctx) float32, pooled (B, P) float32 or None) for weighted prompts."""
    texts = list(texts)
    ids, weights = [], None
    for tokenizer in bundle.tokenizers:
        tokenizer_ids, tokenizer_weights = tokenize_weighted(tokenizer, texts, num_chunks)
        ids.append(tokenizer_ids)
        weights = tokenizer_weights if weights is None else weights  # same BPE: the first one's weights
    context, pooled = encode_prompts(bundle, ids, clip_skip=clip_skip, run=run_graph)
    context = apply_weights(context.asnumpy().astype(np.float32), join_chunk_weights(weights, num_chunks))
    pooled = None if pooled is None else pooled.asnumpy().astype(np.float32)
    return context, pooled


def encode_negatives(bundle, texts, num_chunks, clip_skip=None):
    """Negative prompts; for SDXL an empty negative prompt is all zeros (context and pooled), as diffusers
    (force_zeros_for_empty_prompt) and A1111 do."""
    context, pooled = encode_texts(bundle, texts, num_chunks, clip_skip)
    return _zero_empty_negatives(bundle, texts, context, pooled)


def encode_prompt_pairs(bundle, negatives, prompts, num_chunks, clip_skip=None):
    """[negatives; prompts] in one text-encoder call (the [uncond; cond] layout of guided sampling).

    Same result as encode_negatives then encode_texts, row for row; one compiled call instead of two.
    """
    negatives, prompts = list(negatives), list(prompts)
    context, pooled = encode_texts(bundle, negatives + prompts, num_chunks, clip_skip)
    count = len(negatives)
    neg_context, neg_pooled = _zero_empty_negatives(bundle, negatives, context[:count],
                                                    None if pooled is None else pooled[:count])
    context = np.concatenate([neg_context, context[count:]])
    if pooled is not None:
        pooled = np.concatenate([neg_pooled, pooled[count:]])
    return context, pooled


def encode_with_real_uncond(bundle, negatives, prompts, num_chunks, clip_skip=None):
    """[negatives; prompts; empty prompts] in one text-encoder call: the context of kohya's --negative_scale,
    where the empty prompt (same chunk count) is the unconditional part. Empty negatives and the empty
    prompts are zeros on SDXL, as in encode_negatives."""
    negatives, prompts = list(negatives), list(prompts)
    empties = [""] * len(prompts)
    context, pooled = encode_texts(bundle, negatives + prompts + empties, num_chunks, clip_skip)
    unconditional = negatives + [None] * len(prompts) + empties  # None: a prompt, never zeroed
    empty = np.array([text is not None and not text for text in unconditional])
    if bundle.spec.family == "sdxl":
        context[empty] = 0.0
        pooled[empty] = 0.0
    return context, pooled


def _zero_empty_negatives(bundle, texts, context, pooled):
    if bundle.spec.family == "sdxl":
        empty = np.array([not t for t in texts])
        context[empty] = 0.0
        pooled[empty] = 0.0
    return context, pooled
