"""CLIP text encoders (CLIP-L, and OpenCLIP ViT-H / ViT-bigG in the transformers layout) as MindSpore Cells.

Parameter names are transformers' `CLIPTextModel` / `CLIPTextModelWithProjection` state-dict keys
(`text_model.embeddings.token_embedding.weight`, ..., `text_projection.weight`), so a diffusers
`text_encoder/` or `text_encoder_2/` folder loads by name.

Differences from transformers, on purpose:
- the pooled output is taken at the FIRST end-of-text id (49407), never at argmax(ids): textual-inversion ids
  (>= 49408) would win the argmax that transformers uses with legacy configs (eos_token_id == 2);
- textual inversion trains only the new rows: the token embedding keeps the base table untouched and looks
  ids >= vocab_size up in a separate small Parameter (`...token_embedding.new_rows`);
- `num_layers_to_run` stops the encoder early (penultimate-layer conditioning does not need the last layer).
"""
import time

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ..errors import UserError
from .attention import AttentionCore
from .layers import Embedding, LayerNorm, Linear

EOS_TOKEN_ID = 49407
BOS_TOKEN_ID = 49406

# transformers' CLIPTextConfig defaults, for keys a config dict leaves out.
_CONFIG_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def clip_text_config(config):
    """A plain dict with every key the Cells read; accepts a dict or a transformers config object."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise UserError(f"text encoder config: expected a CLIPTextConfig dict, got {type(config).__name__}")
    out = dict(_CONFIG_DEFAULTS)
    out.update({k: v for k, v in config.items() if v is not None or k not in _CONFIG_DEFAULTS})
    if out["hidden_size"] % out["num_attention_heads"]:
        raise UserError(f"text encoder config: hidden_size {out['hidden_size']} is not divisible by "
                        f"num_attention_heads {out['num_attention_heads']}")
    return out


class QuickGELU(nn.Cell):
    """x * sigmoid(1.702 x): OpenAI CLIP-L's activation (`quick_gelu`)."""

    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class GELU(nn.Cell):
    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def construct(self, x):
        return ops.gelu(x, approximate=self.approximate)


def activation_cell(name):
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return GELU("none")
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return GELU("tanh")
    raise UserError(f"text encoder config: hidden_act {name!r} is not supported "
                    "(expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)")


class CLIPAttention(nn.Cell):
    """Self-attention with q/k/v/out projections (LoRA finds it by this class name)."""

    def __init__(self, config):
        super().__init__()
        dim = config["hidden_size"]
        heads = config["num_attention_heads"]
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)
        self.core = AttentionCore(heads, dim // heads)

    def construct(self, x, mask):
        out = self.core(self.q_proj(x), self.k_proj(x), self.v_proj(x), mask)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    """fc1 -> activation -> fc2 (LoRA finds it by this class name)."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = Linear(config["hidden_size"], config["intermediate_size"])
        self.activation = activation_cell(config["hidden_act"])
        self.fc2 = Linear(config["intermediate_size"], config["hidden_size"])

    def construct(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-norm transformer block."""

    def __init__(self, config):
        super().__init__()
        dim, eps = config["hidden_size"], config["layer_norm_eps"]
        self.layer_norm1 = LayerNorm(dim, eps=eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(config)
        self.gradient_checkpointing = False

    def construct(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.CellList([CLIPEncoderLayer(config) for _ in range(config["num_hidden_layers"])])

    def construct(self, hidden, mask, num_layers):
        """Runs the first `num_layers` layers; returns (input, output of each layer run)."""
        states = (hidden,)
        for i in range(num_layers):
            hidden = self.layers[i](hidden, mask)
            states = states + (hidden,)
        return states


class CLIPTokenEmbedding(Embedding):
    """Token lookup over the base table plus optional new rows for ids >= the base vocabulary size.

    The base table is never concatenated or rewritten: new ids gather from `new_rows`, old ids from `weight`,
    and `where` picks per position, so a gradient w.r.t. `new_rows` is all a textual-inversion step needs.
    """

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__(num_embeddings, embedding_dim)
        self.new_rows = None

    def construct(self, ids):
        if self.new_rows is None:
            return ops.gather(self.weight, ids, 0)
        base_size = self.num_embeddings
        base = ops.gather(self.weight, ops.minimum(ids, base_size - 1), 0)
        added = ops.gather(self.new_rows, ops.clip(ids - base_size, 0, self.new_rows.shape[0] - 1), 0)
        return ops.where((ids >= base_size).expand_dims(-1), added, base)


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.token_embedding = CLIPTokenEmbedding(config["vocab_size"], config["hidden_size"])
        self.position_embedding = Embedding(config["max_position_embeddings"], config["hidden_size"])
        self.position_ids = Tensor(np.arange(config["max_position_embeddings"], dtype=np.int32))

    def construct(self, input_ids):
        seq_len = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:seq_len])


class CLIPTextTransformer(nn.Cell):
    def __init__(self, config):
        super().__init__()
        self.num_layers = config["num_hidden_layers"]
        self.max_positions = config["max_position_embeddings"]
        eos = config.get("eos_token_id")
        # transformers' legacy configs say 2; every SD tokenizer ends text with 49407.
        self.eos_token_id = EOS_TOKEN_ID if eos in (None, 2) else int(eos)
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config["hidden_size"], eps=config["layer_norm_eps"])
        p = self.max_positions
        causal = np.triu(np.full((p, p), np.finfo(np.float32).min, np.float32), k=1)
        self.causal_mask = Tensor(causal.reshape(1, 1, p, p))
        self.first_eos_weight = Tensor(np.arange(p, 0, -1, dtype=np.int32))

    def construct(self, input_ids, num_layers_to_run=None):
        batch, seq_len = input_ids.shape
        hidden = self.embeddings(input_ids)
        mask = self.causal_mask[:, :, :seq_len, :seq_len].astype(hidden.dtype)
        num_layers = self.num_layers if num_layers_to_run is None else num_layers_to_run
        states = self.encoder(hidden, mask, num_layers)
        last = self.final_layer_norm(states[-1])
        # First end-of-text position: among EOS positions, the earliest gets the largest weight.
        is_eos = (input_ids == self.eos_token_id).astype(ms.int32)
        first_eos = ops.argmax(is_eos * self.first_eos_weight[:seq_len], dim=-1).astype(ms.int32)
        rows = ops.arange(batch, dtype=ms.int32) * seq_len + first_eos
        pooled = ops.gather(last.reshape(batch * seq_len, -1), rows, 0)
        return last, states, pooled


class CLIPTextModel(nn.Cell):
    """`construct(input_ids (B,S) int32, num_layers_to_run=None) -> (last_hidden_state, hidden_states, pooled)`.

    hidden_states = (embeddings output, output of each layer run), without the final layer norm;
    last_hidden_state = final_layer_norm(hidden_states[-1]); pooled = last_hidden_state at the first 49407.
    With `num_layers_to_run=n` (a Python int, constant in graph mode) only the first n layers run and the
    outputs are as if the model had n layers.
    """

    def __init__(self, config):
        super().__init__()
        self.config = clip_text_config(config)
        self.text_model = CLIPTextTransformer(self.config)

    @property
    def num_layers(self):
        return self.config["num_hidden_layers"]

    @property
    def hidden_size(self):
        return self.config["hidden_size"]

    @property
    def base_vocab_size(self):
        """Ids at or above this come from the new (textual-inversion) rows."""
        return self.text_model.embeddings.token_embedding.num_embeddings

    def construct(self, input_ids, num_layers_to_run=None):
        return self.text_model(input_ids, num_layers_to_run)

    def final_layer_norm(self, hidden):
        return self.text_model.final_layer_norm(hidden)

    # -- textual inversion: train only the new rows ------------------------------------------------------

    def set_new_token_rows(self, rows):
        """Set the embeddings of ids base_vocab_size .. base_vocab_size+N-1 from an [N, hidden] array.

        Reuses the existing Parameter when the shape is unchanged (optimizers holding it stay valid);
        otherwise creates `text_model.embeddings.token_embedding.new_rows`. The base table is not touched.
        """
        rows = rows.asnumpy() if isinstance(rows, Tensor) else np.asarray(rows)
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[0] < 1 or rows.shape[1] != self.hidden_size:
            raise UserError(f"new token embeddings: expected shape [N, {self.hidden_size}] for this text encoder "
                            f"(hidden size {self.hidden_size}), got {list(rows.shape)}")
        embedding = self.text_model.embeddings.token_embedding
        data = Tensor(np.ascontiguousarray(rows, dtype=np.float32)).astype(embedding.weight.dtype)
        if embedding.new_rows is not None and tuple(embedding.new_rows.shape) == tuple(rows.shape):
            embedding.new_rows.set_data(data)
            return embedding.new_rows
        # Same prefix as the table's name (the one its parents gave it so far); a parent attached later
        # re-prefixes both. Two standalone encoders (SDXL) therefore name their rows alike until wrapped.
        prefix = embedding.weight.name[: -len("weight")]
        embedding.new_rows = Parameter(data, name=prefix + "new_rows")
        self._structure_changed()
        return embedding.new_rows

    def clear_new_token_rows(self):
        """Drop the new rows (ids >= base_vocab_size become invalid again)."""
        if self.text_model.embeddings.token_embedding.new_rows is not None:
            embedding = self.text_model.embeddings.token_embedding
            del embedding.new_rows  # removes it from the Cell's parameter table, not only the attribute
            embedding.new_rows = None
            self._structure_changed()

    def structure_key(self):
        """Changes whenever a compiled graph of this encoder (or of a Cell holding it) becomes stale."""
        return (id(self), self.new_token_rows_parameter() is not None and tuple(self.new_token_rows_parameter().shape))

    def _structure_changed(self):
        # MindSpore reuses a compiled graph per (cell, creation time, inputs): adding or resizing the new rows
        # changes what construct does, so give this cell a fresh key. Parent Cells compiled before the change
        # must be rebuilt by their owner (see structure_key).
        object.__setattr__(self, "_create_time", time.time_ns())

    def new_token_rows(self):
        """The current new rows as a float32 [N, hidden] array (N = 0 when there are none)."""
        new_rows = self.text_model.embeddings.token_embedding.new_rows
        if new_rows is None:
            return np.zeros((0, self.hidden_size), np.float32)
        return new_rows.asnumpy().astype(np.float32)

    def new_token_rows_parameter(self):
        """The trainable Parameter of the new rows (None when there are none)."""
        return self.text_model.embeddings.token_embedding.new_rows

    def token_embedding_rows(self, ids):
        """Rows of the base table for `ids` (e.g. to initialise new tokens from --init_word) as numpy."""
        table = self.text_model.embeddings.token_embedding.weight.asnumpy()
        return table[np.asarray(ids, dtype=np.int64)].astype(np.float32)

    # -- memory ------------------------------------------------------------------------------------------

    def enable_gradient_checkpointing(self):
        """Recompute each encoder layer's activations in the backward pass instead of keeping them."""
        for layer in self.text_model.encoder.layers:
            layer.recompute()
            layer.gradient_checkpointing = True


class CLIPTextModelWithProjection(CLIPTextModel):
    """As CLIPTextModel, plus `text_embeds = text_projection(pooled)` as a fourth output."""

    def __init__(self, config):
        super().__init__(config)
        self.text_projection = Linear(self.config["hidden_size"], self.config["projection_dim"], bias=False)

    def construct(self, input_ids, num_layers_to_run=None):
        last, states, pooled = self.text_model(input_ids, num_layers_to_run)
        return last, states, pooled, self.text_projection(pooled)


def build_text_encoder(config, with_projection=None):
    """The right class for a CLIPTextConfig dict: with projection when asked, or when the config's
    `architectures` names CLIPTextModelWithProjection."""
    config = clip_text_config(config)
    if with_projection is None:
        with_projection = "CLIPTextModelWithProjection" in (config.get("architectures") or [])
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)
