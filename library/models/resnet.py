"""ResNet block and resampling layers shared by the UNet and the VAE (diffusers names and semantics)."""
from mindspore import nn, ops

from .layers import Conv2d, GroupNorm, Linear, add_channel_bias


class ResnetBlock2D(nn.Cell):
    """GroupNorm-SiLU-conv twice, with an optional time embedding added between; residual (1x1 conv if the
    channel count changes), divided by `output_scale_factor`. Dropout is left out (0 in every SD model)."""

    def __init__(self, in_channels, out_channels=None, temb_channels=512, groups=32, eps=1e-5,
                 output_scale_factor=1.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.silu = nn.SiLU()

    def construct(self, x, temb=None):
        h = self.conv1(self.silu(self.norm1(x)))
        if temb is not None and self.time_emb_proj is not None:
            h = add_channel_bias(h, self.time_emb_proj(self.silu(temb)))
        h = self.conv2(self.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Cell):
    """Stride-2 3x3 conv. padding=1: symmetric (UNet); padding=0: pad right/bottom by one first (VAE)."""

    def __init__(self, channels, out_channels=None, padding=1):
        super().__init__()
        out_channels = out_channels or channels
        self.padding = padding
        self.conv = Conv2d(channels, out_channels, 3, stride=2, padding=padding)

    def construct(self, x):
        if self.padding == 0:
            x = ops.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def upsample_nearest2x(x):
    """Nearest-neighbour x2 (each pixel repeated 2x2), as torch's interpolate(scale_factor=2, 'nearest')."""
    b, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2))
    return x.reshape(b, c, h * 2, w * 2)


class Upsample2D(nn.Cell):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = Conv2d(channels, out_channels, 3, padding=1)

    def construct(self, x):
        return self.conv(upsample_nearest2x(x))
