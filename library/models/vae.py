"""AutoencoderKL (the SD/SDXL VAE) with diffusers parameter names, built from a diffusers config dict.

Scaling by the spec's `vae_scaling_factor` happens outside (see docs/ARCHITECTURE.md).
"""
from mindspore import nn, ops

from ..errors import UserError
from .attention import AttentionCore
from .layers import Conv2d, GroupNorm, Linear
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

VAE_EPS = 1e-6  # every norm in the diffusers VAE


class VAEAttentionBlock(nn.Cell):
    """Single-head self-attention over all pixels, residual (diffusers `Attention` in the VAE mid block)."""

    def __init__(self, channels, groups):
        super().__init__()
        self.channels = channels
        self.group_norm = GroupNorm(groups, channels, eps=VAE_EPS)
        self.to_q = Linear(channels, channels)
        self.to_k = Linear(channels, channels)
        self.to_v = Linear(channels, channels)
        self.to_out = nn.CellList([Linear(channels, channels)])
        self.attn = AttentionCore(1, channels)

    def construct(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(0, 2, 1)
        out = self.attn(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens))
        out = self.to_out[0](out)
        return x + out.transpose(0, 2, 1).reshape(b, c, h, w)


class VAEMidBlock(nn.Cell):
    def __init__(self, channels, groups, add_attention=True):
        super().__init__()
        self.resnets = nn.CellList([ResnetBlock2D(channels, channels, None, groups, VAE_EPS) for _ in range(2)])
        self.attentions = nn.CellList([VAEAttentionBlock(channels, groups)] if add_attention else [])
        self.add_attention = add_attention

    def construct(self, x):
        x = self.resnets[0](x)
        if self.add_attention:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Cell):
    def __init__(self, in_channels, out_channels, num_layers, groups, add_downsample):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, VAE_EPS)
            for i in range(num_layers)])
        self.downsamplers = nn.CellList([Downsample2D(out_channels, out_channels, padding=0)] if add_downsample
                                        else [])

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class UpDecoderBlock2D(nn.Cell):
    def __init__(self, in_channels, out_channels, num_layers, groups, add_upsample):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups, VAE_EPS)
            for i in range(num_layers)])
        self.upsamplers = nn.CellList([Upsample2D(out_channels, out_channels)] if add_upsample else [])

    def construct(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)
        return x


class Encoder(nn.Cell):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, mid_attention):
        super().__init__()
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        output_channel = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            input_channel, output_channel = output_channel, channels
            last = i == len(block_out_channels) - 1
            blocks.append(DownEncoderBlock2D(input_channel, output_channel, layers_per_block, groups, not last))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = VAEMidBlock(block_out_channels[-1], groups, mid_attention)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[-1], eps=VAE_EPS)
        self.conv_out = Conv2d(block_out_channels[-1], out_channels, 3, padding=1)
        self.silu = nn.SiLU()

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, groups, mid_attention):
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = Conv2d(in_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = VAEMidBlock(reversed_channels[0], groups, mid_attention)
        blocks = []
        output_channel = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            prev_channel, output_channel = output_channel, channels
            last = i == len(reversed_channels) - 1
            blocks.append(UpDecoderBlock2D(prev_channel, output_channel, layers_per_block + 1, groups, not last))
        self.up_blocks = nn.CellList(blocks)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[0], eps=VAE_EPS)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.silu = nn.SiLU()

    def construct(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.silu(self.conv_norm_out(x)))


def _check_config(config):
    def bad(key, expected):
        raise UserError(f"VAE config key '{key}': expected {expected}, got {config.get(key)!r}")

    n = len(config.get("block_out_channels") or ())
    if n == 0:
        bad("block_out_channels", "a non-empty list of channel counts")
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = config.get(key, [kind] * n)
        if len(types) != n or any(t != kind for t in types):
            bad(key, f"{n} x '{kind}' (one per block_out_channels entry)")
    if config.get("act_fn", "silu") != "silu":
        bad("act_fn", "'silu'")
    if config.get("norm_num_groups", 32) and any(c % config.get("norm_num_groups", 32)
                                                 for c in config["block_out_channels"]):
        bad("norm_num_groups", "a divisor of every block_out_channels entry")


class AutoencoderKL(nn.Cell):
    """`encode(x in [-1,1]) -> (mean, logvar)`, `decode(z) -> x`; `sample(mean, logvar, noise)`."""

    def __init__(self, config):
        super().__init__()
        _check_config(config)
        self.config = dict(config)
        channels = list(config["block_out_channels"])
        layers = config.get("layers_per_block", 2)
        groups = config.get("norm_num_groups", 32)
        latent = config.get("latent_channels", 4)
        mid_attention = config.get("mid_block_add_attention", True)
        self.latent_channels = latent
        self.encoder = Encoder(config.get("in_channels", 3), 2 * latent, channels, layers, groups, mid_attention)
        self.decoder = Decoder(latent, config.get("out_channels", 3), channels, layers, groups, mid_attention)
        self.use_quant_conv = config.get("use_quant_conv", True)
        self.use_post_quant_conv = config.get("use_post_quant_conv", True)
        self.quant_conv = Conv2d(2 * latent, 2 * latent, 1) if self.use_quant_conv else None
        self.post_quant_conv = Conv2d(latent, latent, 1) if self.use_post_quant_conv else None

    def encode(self, x):
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = ops.split(moments, self.latent_channels, axis=1)
        return mean, ops.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    @staticmethod
    def sample(mean, logvar, noise):
        """A draw from the diagonal Gaussian: mean + exp(logvar / 2) * noise."""
        return mean + ops.exp(0.5 * logvar) * noise

    def construct(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


class VAEEncode(nn.Cell):
    """Graph-compiled `vae.encode` (a method called directly on a Cell runs op by op)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, x):
        return self.vae.encode(x)


class VAEDecode(nn.Cell):
    """Graph-compiled `vae.decode`."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def construct(self, z):
        return self.vae.decode(z)
