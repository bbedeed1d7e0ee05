"""UNet levels (diffusers' CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D,
UpBlock2D): resnets, optional spatial transformers, and the resampler, with diffusers' module names.

Every block has the same call shape so the UNet can loop over heterogeneous levels in graph mode:
down blocks `(h, temb, context) -> (h, skip_states)`, up blocks `(h, skip_states, temb, context) -> h`.
"""
from mindspore import nn, ops

from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer import Transformer2DModel

_concat_channels = ops.Concat(axis=1)  # primitive: no wrapper graph to parse per call site


def _transformers(count, channels, heads, layers, cross_attention_dim, groups, use_linear_projection):
    # diffusers derives the per-head width from the level's channels and its head count
    return nn.CellList([
        Transformer2DModel(heads, channels // heads, channels, num_layers=layers,
                           cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                           use_linear_projection=use_linear_projection)
        for _ in range(count)])


class DownBlock2D(nn.Cell):
    has_attention = False

    def __init__(self, num_layers, in_channels, out_channels, temb_channels, add_downsample, groups, eps,
                 downsample_padding=1, **_attention_options):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
            for i in range(num_layers)])
        self.downsamplers = (nn.CellList([Downsample2D(out_channels, out_channels, padding=downsample_padding)])
                             if add_downsample else None)

    def construct(self, hidden_states, temb, encoder_hidden_states=None):
        states = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            states += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            states += (hidden_states,)
        return hidden_states, states


class CrossAttnDownBlock2D(DownBlock2D):
    has_attention = True

    def __init__(self, num_layers, in_channels, out_channels, temb_channels, add_downsample, groups, eps,
                 downsample_padding=1, num_attention_heads=8, transformer_layers=1, cross_attention_dim=768,
                 use_linear_projection=False):
        super().__init__(num_layers, in_channels, out_channels, temb_channels, add_downsample, groups, eps,
                         downsample_padding)
        self.attentions = _transformers(num_layers, out_channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection)

    def construct(self, hidden_states, temb, encoder_hidden_states=None):
        states = ()
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states = attention(resnet(hidden_states, temb), encoder_hidden_states)
            states += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            states += (hidden_states,)
        return hidden_states, states


class UNetMidBlock2DCrossAttn(nn.Cell):
    """resnet -> (transformer -> resnet) x num_layers (1 in every SD model)."""

    def __init__(self, in_channels, temb_channels, groups, eps, num_attention_heads, transformer_layers,
                 cross_attention_dim, use_linear_projection, num_layers=1, output_scale_factor=1.0):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels, in_channels, temb_channels, groups, eps,
                          output_scale_factor=output_scale_factor)
            for _ in range(num_layers + 1)])
        self.attentions = _transformers(num_layers, in_channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection)

    def construct(self, hidden_states, temb, encoder_hidden_states):
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = resnet(attention(hidden_states, encoder_hidden_states), temb)
        return hidden_states


def _up_resnets(num_layers, in_channels, prev_output_channel, out_channels, temb_channels, groups, eps):
    # resnet i sees the previous output (first: the level below) concatenated with one skip state; the last
    # skip of a level comes from the level above's input width.
    cells = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        own_channels = prev_output_channel if i == 0 else out_channels
        cells.append(ResnetBlock2D(own_channels + skip_channels, out_channels, temb_channels, groups, eps))
    return nn.CellList(cells)


class UpBlock2D(nn.Cell):
    has_attention = False

    def __init__(self, num_layers, in_channels, prev_output_channel, out_channels, temb_channels, add_upsample,
                 groups, eps, **_attention_options):
        super().__init__()
        self.num_layers = num_layers
        self.resnets = _up_resnets(num_layers, in_channels, prev_output_channel, out_channels, temb_channels,
                                   groups, eps)
        self.upsamplers = nn.CellList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def construct(self, hidden_states, skip_states, temb, encoder_hidden_states=None):
        for i, resnet in enumerate(self.resnets):
            skip = skip_states[len(skip_states) - 1 - i]  # consumed from the last one
            hidden_states = resnet(_concat_channels((hidden_states, skip)), temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class CrossAttnUpBlock2D(UpBlock2D):
    has_attention = True

    def __init__(self, num_layers, in_channels, prev_output_channel, out_channels, temb_channels, add_upsample,
                 groups, eps, num_attention_heads=8, transformer_layers=1, cross_attention_dim=768,
                 use_linear_projection=False):
        super().__init__(num_layers, in_channels, prev_output_channel, out_channels, temb_channels,
                         add_upsample, groups, eps)
        self.attentions = _transformers(num_layers, out_channels, num_attention_heads, transformer_layers,
                                        cross_attention_dim, groups, use_linear_projection)

    def construct(self, hidden_states, skip_states, temb, encoder_hidden_states=None):
        for i, (resnet, attention) in enumerate(zip(self.resnets, self.attentions)):
            skip = skip_states[len(skip_states) - 1 - i]
            hidden_states = resnet(_concat_channels((hidden_states, skip)), temb)
            hidden_states = attention(hidden_states, encoder_hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "CrossAttnDownBlock2D": CrossAttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "CrossAttnUpBlock2D": CrossAttnUpBlock2D}
