"""The UNet's spatial transformer: Transformer2DModel and its blocks, with diffusers' module names.

LoRA finds its targets by class name (`Transformer2DModel`, `Attention`, ...), so the class names here are
diffusers' own.
"""
from mindspore import nn, ops

# Primitives rather than Tensor methods / functional wrappers: each wrapper is parsed into its own function
# graph at compile time, and the UNet has hundreds of these calls (measured ~20-30% shorter type inference).
_reshape = ops.Reshape()
_transpose = ops.Transpose()
_split_last_in_two = ops.Split(axis=-1, output_num=2)

from .attention import AttentionCore
from .layers import Conv2d, GroupNorm, LayerNorm, Linear


class _NoParams(nn.Cell):
    """Placeholder for diffusers' Dropout slots, so list indices (`ff.net.2`) match diffusers."""

    def construct(self, x):
        return x


class Attention(nn.Cell):
    """Multi-head attention: to_q/to_k/to_v without bias, to_out.0 with bias. Self-attention when no context."""

    def __init__(self, query_dim, heads, dim_head, cross_attention_dim=None):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.CellList([Linear(inner_dim, query_dim), _NoParams()])
        self.core = AttentionCore(heads, dim_head)

    def construct(self, hidden_states, encoder_hidden_states=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = self.core(self.to_q(hidden_states), self.to_k(context), self.to_v(context))
        return self.to_out[0](out)


class GEGLU(nn.Cell):
    """proj to 2x width, split in (value, gate), value * gelu(gate) with exact (erf) GELU."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def construct(self, x):
        value, gate = _split_last_in_two(self.proj(x))
        return value * ops.gelu(gate, approximate="none")


class FeedForward(nn.Cell):
    """net.0 = GEGLU(dim -> 4*dim), net.1 = dropout slot, net.2 = Linear(4*dim -> dim)."""

    def __init__(self, dim, mult=4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.CellList([GEGLU(dim, inner_dim), _NoParams(), Linear(inner_dim, dim)])

    def construct(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Cell):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each with a residual."""

    def __init__(self, dim, heads, dim_head, cross_attention_dim):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim)
        self.norm3 = LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def construct(self, hidden_states, encoder_hidden_states):
        hidden_states = self.attn1(self.norm1(hidden_states)) + hidden_states
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


class Transformer2DModel(nn.Cell):
    """GroupNorm -> proj_in -> transformer blocks over the H*W tokens -> proj_out, plus the input.

    proj_in/proj_out are 1x1 convs (SD1) or Linear layers (use_linear_projection: SD2, SDXL).
    """

    def __init__(self, num_attention_heads, attention_head_dim, in_channels, num_layers=1,
                 cross_attention_dim=None, norm_num_groups=32, use_linear_projection=False):
        super().__init__()
        inner_dim = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            self.proj_in = Conv2d(in_channels, inner_dim, 1)
            self.proj_out = Conv2d(inner_dim, in_channels, 1)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim)
            for _ in range(num_layers)])

    def construct(self, hidden_states, encoder_hidden_states):
        b, c, h, w = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states)
        if self.use_linear_projection:
            x = self.proj_in(_reshape(_transpose(x, (0, 2, 3, 1)), (b, h * w, c)))
        else:
            x = self.proj_in(x)
            x = _reshape(_transpose(x, (0, 2, 3, 1)), (b, h * w, x.shape[1]))
        for block in self.transformer_blocks:
            x = block(x, encoder_hidden_states)
        if self.use_linear_projection:
            x = _transpose(_reshape(self.proj_out(x), (b, h, w, c)), (0, 3, 1, 2))
        else:
            x = self.proj_out(_transpose(_reshape(x, (b, h, w, x.shape[-1])), (0, 3, 1, 2)))
        return x + residual
