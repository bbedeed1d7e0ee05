"""Text conditioning for the UNet: which encoder layer each family uses, long prompts, SDXL pooled/size inputs.

Family rules (L = the encoder's number of layers, hidden[i] = output of layer i, hidden[0] = embeddings):
- sd1: final_layer_norm(hidden[L - (clip_skip - 1)]); clip_skip None or 1 = the last layer (kohya
  `hidden_states[-clip_skip]` + final LN).
- sd2: OpenCLIP ViT-H conditions on layer 23 of its 24 (the penultimate) + final LN. diffusers stores SD2
  encoders already cut to 23 layers, so the layer used is min(L, 23): the last of a 23-layer (diffusers)
  encoder, the penultimate of a full 24-layer one, the last of a smaller (tiny) one. clip_skip k counts back
  from there: min(L, 23) - (k - 1), which on a diffusers encoder equals kohya's `hidden_states[-k]` + LN.
- sdxl: encoder 1 hidden[L1 - 1] (= `hidden_states[11]` of CLIP-L), encoder 2 hidden[L2 - 1]
  (= `hidden_states[-2]`), no final LN, concatenated on features (768 + 1280 = 2048); pooled = encoder 2's
  text_projection(final_layer_norm(hidden[L2])) at the first 49407. clip_skip is ignored (as kohya does).
Only the layers needed run (an SD2 24-layer encoder stops after 23, SDXL encoder 1 after L1 - 1).

Long prompts (kohya `--max_token_length` 150/225): ids arrive as (B, 77*k), k chunks of
`BOS + 75 tokens + EOS/PAD` built by the tokenizer. Each chunk is encoded on its own; the chunks' states are
joined as kohya does: the first chunk's BOS state, positions 1..75 of every chunk, and the last chunk's final
state -> 1 + 75*k + 1 positions (77 for k = 1, 152 for k = 2, 227 for k = 3). The inner BOS/EOS states are
dropped. (kohya's SD2 branch has a step meant to copy a PAD state over an empty chunk's first position; it
compares an id with the token *string*, so it never fires: both families join identically.) SDXL's pooled
output comes from the first chunk.
"""
from collections import OrderedDict

import numpy as np
from mindspore import nn, ops, Tensor

from ..errors import UserError
from .bundle import graph_structure_key
from .clip import CLIPTextModelWithProjection

FAMILIES = ("sd1", "sd2", "sdxl")
CHUNK_LENGTH = 77
CONTENT_PER_CHUNK = 75
MAX_CHUNKS = 3
SD2_CONDITIONING_LAYER = 23


def context_length(num_chunks):
    """Sequence length of the context for k chunks of 77 ids: 1 + 75k + 1."""
    return CONTENT_PER_CHUNK * num_chunks + 2


def _check_family(family):
    if family not in FAMILIES:
        raise UserError(f"model family {family!r} is not known (expected one of {', '.join(FAMILIES)})")


def _check_clip_skip(clip_skip):
    if clip_skip is None:
        return 1
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, np.integer)) or clip_skip < 1:
        raise UserError(f"--clip_skip must be a whole number >= 1, got {clip_skip!r}")
    return int(clip_skip)


def conditioning_plan(family, layer_counts, clip_skip=None):
    """Per encoder: (layers to run, index into the returned hidden states, apply final LN).

    The index is into the tuple `hidden_states` the encoder returns when it runs that many layers.
    """
    _check_family(family)
    if family == "sdxl":
        if len(layer_counts) != 2:
            raise UserError(f"sdxl needs 2 text encoders, got {len(layer_counts)}")
        first, second = layer_counts
        if first < 2 or second < 2:
            raise UserError("sdxl text encoders need at least 2 layers each (the penultimate one is used)")
        # encoder 1 stops after its penultimate layer; encoder 2 runs fully (its last layer feeds pooled)
        return [(first - 1, first - 1, False), (second, second - 1, False)]
    if len(layer_counts) != 1:
        raise UserError(f"{family} needs 1 text encoder, got {len(layer_counts)}")
    num_layers = layer_counts[0]
    base = num_layers if family == "sd1" else min(num_layers, SD2_CONDITIONING_LAYER)
    skip = _check_clip_skip(clip_skip)
    run = base - (skip - 1)
    if run < 1:
        raise UserError(f"--clip_skip {clip_skip} is too large for a text encoder of {num_layers} layers "
                        f"(at most {base})")
    return [(run, run, True)]


def join_chunks(states, num_chunks):
    """(B, 77k, D) states of k separately encoded chunks -> (B, 1 + 75k + 1, D) as kohya joins them."""
    if num_chunks == 1:
        return states
    parts = [states[:, 0:1]]
    for chunk in range(num_chunks):
        start = chunk * CHUNK_LENGTH + 1
        parts.append(states[:, start:start + CONTENT_PER_CHUNK])
    total = num_chunks * CHUNK_LENGTH
    parts.append(states[:, total - 1:total])
    return ops.concat(parts, axis=1)


def weight_context(context, weights):
    """kohya's weighted captions in training: each context position (B, 75k+2, ctx) times its weight (B, 75k+2);
    no mean restoring (gen_img's prompt weighting restores it, training does not). Graph ops, explicit
    broadcast (see ARCHITECTURE.md pitfalls)."""
    weights = ops.cast(ops.expand_dims(weights, -1), context.dtype)
    return context * ops.broadcast_to(weights, context.shape)


class TextConditioner(nn.Cell):
    """`construct(ids_1 (B, 77k) int32, ids_2=None) -> (context (B, 75k+2, ctx), pooled (B, P) or None)`.

    Usable inside a GRAPH_MODE training Cell (gradients flow to the encoders' parameters, e.g. the new
    textual-inversion rows). `num_chunks` None = taken from the ids' length; when given, ids of another
    length are refused.
    """

    def __init__(self, encoders, family, clip_skip=None, num_chunks=None):
        super().__init__()
        encoders = list(encoders)
        self.family = family
        plan = conditioning_plan(family, [e.num_layers for e in encoders], clip_skip)
        if family == "sdxl" and not isinstance(encoders[1], CLIPTextModelWithProjection):
            raise UserError("sdxl text encoder 2 must have a text projection (CLIPTextModelWithProjection)")
        if num_chunks is not None and not 1 <= num_chunks <= MAX_CHUNKS:
            raise UserError(f"prompt chunks: expected 1 to {MAX_CHUNKS} chunks of 75 tokens "
                            f"(--max_token_length 75, 150 or 225), got {num_chunks}")
        self.encoders = nn.CellList(encoders)
        self.layers_to_run = tuple(p[0] for p in plan)
        self.state_index = tuple(p[1] for p in plan)
        self.final_norm = tuple(p[2] for p in plan)
        self.num_chunks = num_chunks

    def _chunks_of(self, ids):
        k = ids.shape[1] // CHUNK_LENGTH
        if ids.shape[1] != k * CHUNK_LENGTH or (self.num_chunks is not None and k != self.num_chunks):
            raise ValueError("text conditioning: input ids length must be 77 * num_chunks")
        return k

    def _encode(self, index, ids):
        """Encode (B, 77k) ids with encoder `index`; returns joined states and (for projection) text_embeds."""
        batch = ids.shape[0]
        k = self._chunks_of(ids)
        outputs = self.encoders[index](ids.reshape(batch * k, CHUNK_LENGTH), self.layers_to_run[index])
        if self.final_norm[index]:
            states = outputs[0]  # final LN of the last layer run
        else:
            states = outputs[1][self.state_index[index]]
        states = join_chunks(states.reshape(batch, k * CHUNK_LENGTH, -1), k)
        return states, outputs, k

    def construct(self, ids_1, ids_2=None):
        context, _, _ = self._encode(0, ids_1)
        if self.family != "sdxl":
            return context, None
        context_2, outputs_2, k = self._encode(1, ids_2)
        text_embeds = outputs_2[3]
        pooled = text_embeds.reshape(ids_2.shape[0], k, -1)[:, 0]
        return ops.concat((context, context_2), axis=-1), pooled


# Inference: reuse a compiled conditioner per (encoders' structure incl. LoRA adapters and new rows, family,
# clip_skip). A structure change gives a new key, so a new conditioner Cell that compiles afresh.
_CONDITIONER_CACHE = OrderedDict()
_CACHE_SIZE = 4


def cached_conditioner(encoders, family, clip_skip=None):
    """The compiled-once TextConditioner for these encoders as they are now (adapters and new rows included)."""
    encoders = list(encoders)
    key = (tuple(graph_structure_key(e) for e in encoders), family, clip_skip)
    conditioner = _CONDITIONER_CACHE.pop(key, None)
    if conditioner is None:
        conditioner = TextConditioner(encoders, family, clip_skip)
    _CONDITIONER_CACHE[key] = conditioner
    while len(_CONDITIONER_CACHE) > _CACHE_SIZE:
        _CONDITIONER_CACHE.popitem(last=False)
    return conditioner


def _as_ids_tensor(ids, which):
    if isinstance(ids, Tensor):
        ids = ids.asnumpy()
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] % CHUNK_LENGTH or not 1 <= ids.shape[1] // CHUNK_LENGTH <= MAX_CHUNKS:
        raise UserError(f"input ids for text encoder {which}: expected shape (batch, 77 * k) with k in 1..3, "
                        f"got {list(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise UserError(f"input ids for text encoder {which}: expected integers, got {ids.dtype}")
    return Tensor(ids.astype(np.int32))


def encode_prompts(bundle_or_encoders, ids_per_encoder, family=None, clip_skip=None, run=None):
    """Context (and SDXL pooled) for token ids, outside a training graph (sampling, caching).

    bundle_or_encoders: a ModelBundle (family from its spec) or a list of text encoders (family required).
    ids_per_encoder: one (B, 77k) integer array per encoder (numpy or Tensor).
    run: optional `run(cell, *inputs)` that calls the compiled conditioner (sampling passes its fast
    caller); default `cell(*inputs)`.
    Returns (context Tensor (B, 75k+2, ctx), pooled Tensor (B, P) for sdxl else None).
    """
    if hasattr(bundle_or_encoders, "text_encoders"):
        encoders = list(bundle_or_encoders.text_encoders)
        family = family or bundle_or_encoders.spec.family
    else:
        encoders = list(bundle_or_encoders)
    if family is None:
        raise UserError("encode_prompts: the model family (sd1, sd2, sdxl) is needed with a list of encoders")
    if isinstance(ids_per_encoder, (np.ndarray, Tensor)):
        ids_per_encoder = [ids_per_encoder]
    if len(ids_per_encoder) != len(encoders):
        raise UserError(f"encode_prompts: got input ids for {len(ids_per_encoder)} tokenizer(s), "
                        f"the {family} model has {len(encoders)} text encoder(s)")
    ids = [_as_ids_tensor(x, i + 1) for i, x in enumerate(ids_per_encoder)]
    if len(ids) == 2 and ids[0].shape != ids[1].shape:
        raise UserError(f"encode_prompts: the two tokenizers' ids differ in shape: {list(ids[0].shape)} vs "
                        f"{list(ids[1].shape)}")
    conditioner = cached_conditioner(encoders, family, clip_skip)
    return conditioner(*ids) if run is None else run(conditioner, *ids)


def size_embedding_inputs(original_hw, crop_tl, target_hw):
    """SDXL time_ids (B, 6) float32: [orig_h, orig_w, crop_top, crop_left, target_h, target_w] per row.

    Each argument is one (h, w)/(top, left) pair or a (B, 2) array; single pairs broadcast over the batch.
    """
    parts = []
    for name, value in (("original_hw", original_hw), ("crop_tl", crop_tl), ("target_hw", target_hw)):
        array = np.asarray(value, dtype=np.float32)
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != 2:
            raise UserError(f"size conditioning {name}: expected pairs of shape (B, 2), got {list(array.shape)}")
        parts.append(array)
    batch = max(p.shape[0] for p in parts)
    if any(p.shape[0] not in (1, batch) for p in parts):
        raise UserError("size conditioning: original_hw, crop_tl and target_hw have different batch sizes "
                        f"({', '.join(str(p.shape[0]) for p in parts)})")
    return np.concatenate([np.broadcast_to(p, (batch, 2)) for p in parts], axis=1).astype(np.float32)
