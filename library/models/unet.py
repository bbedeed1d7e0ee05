"""UNet2DConditionModel for SD1/SD2/SDXL, built from a diffusers config dict, with diffusers parameter names."""
from mindspore import nn, ops

from ..errors import UserError
from .embeddings import TimestepEmbedding, Timesteps, text_time_embedding
from .layers import Conv2d, GroupNorm
from .resnet import ResnetBlock2D
from .transformer import Transformer2DModel
from .unet_blocks import DOWN_BLOCKS, UP_BLOCKS, UNetMidBlock2DCrossAttn

# Config values this implementation covers; anything else is refused by name rather than silently ignored.
_SUPPORTED = {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "class_embed_type": (None,),
    "encoder_hid_dim_type": (None,),
    "addition_embed_type": (None, "text_time"),
    "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",),
    "attention_type": ("default",),
    "dual_cross_attention": (False,),
    "only_cross_attention": (False,),
    "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "act_fn": ("silu",),
    "reverse_transformer_layers_per_block": (None,),
    "resnet_out_scale_factor": (1.0,),
}

_DEFAULTS = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0, "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1, "attention_head_dim": 8, "num_attention_heads": None,
    "use_linear_projection": False, "upcast_attention": False, "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None, "time_embedding_dim": None,
}


def _per_level(config, key, levels):
    value = config[key]
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise UserError(f"UNet config key {key!r}: expected one value per level ({levels}), got {list(value)}")
        return list(value)
    return [value] * levels


def resolve_unet_config(config):
    """diffusers' defaults filled in, unsupported options refused, per-level lists expanded."""
    for key, allowed in _SUPPORTED.items():
        value = config.get(key, allowed[0])
        if isinstance(value, (list, tuple)) and key == "only_cross_attention":
            value = True in value
        if value not in allowed:
            raise UserError(f"UNet config key {key!r} = {value!r} is not supported; expected one of {allowed}")
    cfg = dict(_DEFAULTS)
    cfg.update({k: v for k, v in config.items() if not k.startswith("_")})
    if len(cfg["down_block_types"]) != len(cfg["up_block_types"]):
        raise UserError("UNet config: down_block_types and up_block_types must have the same length")
    for key, known in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
        for name in cfg[key]:
            if name not in known:
                raise UserError(f"UNet config key {key!r}: block type {name!r} is not supported; "
                                f"expected {sorted(known)}")
    levels = len(cfg["block_out_channels"])
    # diffusers' legacy naming: `attention_head_dim` holds the number of heads unless num_attention_heads is set
    heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]
    cfg["heads_per_level"] = _per_level(dict(cfg, heads=heads), "heads", levels)
    for key in ("layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
        cfg[key + "_per_level"] = _per_level(cfg, key, levels)
    if cfg.get("addition_embed_type") == "text_time":
        if not cfg["addition_time_embed_dim"] or not cfg["projection_class_embeddings_input_dim"]:
            raise UserError("UNet config: addition_embed_type 'text_time' needs addition_time_embed_dim and "
                            "projection_class_embeddings_input_dim")
    return cfg


class UNet2DConditionModel(nn.Cell):
    """Noise (or v) prediction from latents, timesteps and text context; SDXL also takes pooled text and
    the six size/crop numbers (`text_embeds`, `time_ids`)."""

    def __init__(self, config):
        super().__init__()
        cfg = resolve_unet_config(config)
        self.config = dict(config)
        channels = list(cfg["block_out_channels"])
        levels = len(channels)
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        time_embed_dim = cfg["time_embedding_dim"] or channels[0] * 4
        self.center_input_sample = cfg["center_input_sample"]
        self.upsample_factor = 2 ** (levels - 1)

        self.conv_in = Conv2d(cfg["in_channels"], channels[0], 3, padding=1)
        self.time_proj = Timesteps(channels[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.has_text_time = cfg.get("addition_embed_type") == "text_time"
        if self.has_text_time:
            self.add_time_proj = Timesteps(cfg["addition_time_embed_dim"], cfg["flip_sin_to_cos"], cfg["freq_shift"])
            self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], time_embed_dim)

        heads, depth = cfg["heads_per_level"], cfg["transformer_layers_per_block_per_level"]
        context, layers = cfg["cross_attention_dim_per_level"], cfg["layers_per_block_per_level"]
        linear = cfg["use_linear_projection"]
        down = []
        for i, name in enumerate(cfg["down_block_types"]):
            down.append(DOWN_BLOCKS[name](
                layers[i], channels[max(i - 1, 0)], channels[i], time_embed_dim, i < levels - 1, groups, eps,
                downsample_padding=cfg["downsample_padding"], num_attention_heads=heads[i],
                transformer_layers=depth[i], cross_attention_dim=context[i], use_linear_projection=linear))
        self.down_blocks = nn.CellList(down)

        self.mid_block = UNetMidBlock2DCrossAttn(
            channels[-1], time_embed_dim, groups, eps, heads[-1], depth[-1], context[-1], linear,
            output_scale_factor=cfg["mid_block_scale_factor"])

        up = []
        rev = lambda values: list(reversed(values))  # noqa: E731 - up levels run from the bottom
        r_channels, r_heads, r_depth, r_context, r_layers = map(rev, (channels, heads, depth, context, layers))
        output_channel = r_channels[0]
        for i, name in enumerate(cfg["up_block_types"]):
            prev_output_channel, output_channel = output_channel, r_channels[i]
            input_channel = r_channels[min(i + 1, levels - 1)]
            up.append(UP_BLOCKS[name](
                r_layers[i] + 1, input_channel, prev_output_channel, output_channel, time_embed_dim,
                i < levels - 1, groups, eps, num_attention_heads=r_heads[i], transformer_layers=r_depth[i],
                cross_attention_dim=r_context[i], use_linear_projection=linear))
        self.up_blocks = nn.CellList(up)

        self.conv_norm_out = GroupNorm(groups, channels[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(channels[0], cfg["out_channels"], 3, padding=1)

    def enable_gradient_checkpointing(self):
        """Recompute each resnet and transformer block in the backward pass instead of keeping activations."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, (ResnetBlock2D, Transformer2DModel)):
                cell.recompute()

    def construct(self, sample, timesteps, encoder_hidden_states, text_embeds=None, time_ids=None):
        b, _, h, w = sample.shape
        if h % self.upsample_factor != 0 or w % self.upsample_factor != 0:
            raise ValueError(f"UNet latent height and width must be multiples of {self.upsample_factor}")
        if self.center_input_sample:
            sample = 2.0 * sample - 1.0
        timesteps = ops.broadcast_to(timesteps.reshape(-1), (b,))
        emb = self.time_embedding(self.time_proj(timesteps).astype(sample.dtype))
        if self.has_text_time:
            emb = emb + text_time_embedding(self.add_time_proj, self.add_embedding, text_embeds, time_ids)

        hidden = self.conv_in(sample)
        skips = (hidden,)
        for block in self.down_blocks:
            hidden, states = block(hidden, emb, encoder_hidden_states)
            skips += states
        hidden = self.mid_block(hidden, emb, encoder_hidden_states)
        for block in self.up_blocks:
            count = block.num_layers
            hidden = block(hidden, skips[len(skips) - count:], emb, encoder_hidden_states)
            skips = skips[:len(skips) - count]
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
