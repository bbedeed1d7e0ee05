"""Named model specifications: diffusers/transformers config dicts for each supported model family.

The dicts use the exact keyword names of diffusers `UNet2DConditionModel` / `AutoencoderKL` and transformers
`CLIPTextConfig`, so reference tests build torch models from the same dicts, and diffusers folders' config.json
files can be compared key by key.

Tiny specs keep every structural feature of their full-size family (levels with and without attention, conv vs
linear transformer projection, SDXL `text_time` conditioning, two text encoders, an 8x VAE) with few channels,
so the whole pipeline runs in seconds on a CPU.
"""
import copy
from dataclasses import dataclass, field

from ..errors import UserError

SD_VAE_SCALING = 0.18215
SDXL_VAE_SCALING = 0.13025


@dataclass
class ModelSpec:
    name: str
    family: str  # "sd1" | "sd2" | "sdxl"
    unet: dict  # diffusers UNet2DConditionModel config
    vae: dict  # diffusers AutoencoderKL config
    text_encoders: list = field(default_factory=list)  # transformers CLIPTextConfig dicts
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction"
    vae_scaling_factor: float = SD_VAE_SCALING
    resolution: int = 512  # default image side in pixels

    @property
    def sample_size(self):
        """Default latent side (resolution / 8)."""
        return self.unet["sample_size"]

    @property
    def is_sdxl(self):
        return self.family == "sdxl"

    @property
    def context_dim(self):
        return self.unet["cross_attention_dim"]


# ---------------------------------------------------------------- text encoders

def _clip_text(hidden, intermediate, layers, heads, act, projection_dim=None):
    config = {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        # 49407 (not the legacy 2) makes transformers pool at the first end-of-text token.
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }
    if projection_dim is not None:
        config["projection_dim"] = projection_dim
    return config


CLIP_L = _clip_text(768, 3072, 12, 12, "quick_gelu")
# SD2's diffusers text encoder has 23 of OpenCLIP ViT-H's 24 layers (penultimate output baked in).
OPENCLIP_H = _clip_text(1024, 4096, 23, 16, "gelu", projection_dim=1024)
OPENCLIP_BIGG = _clip_text(1280, 5120, 32, 20, "gelu", projection_dim=1280)

# ---------------------------------------------------------------- VAEs

def _vae(block_out_channels, norm_num_groups, sample_size, scaling_factor, force_upcast):
    n = len(block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "force_upcast": force_upcast,
    }


# ---------------------------------------------------------------- UNets

def _unet(*, sample_size, block_out_channels, down_block_types, up_block_types, attention_head_dim,
          cross_attention_dim, use_linear_projection, norm_num_groups=32, transformer_layers_per_block=1,
          upcast_attention=False, addition_time_embed_dim=None, projection_class_embeddings_input_dim=None):
    config = {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": list(down_block_types),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": list(up_block_types),
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": norm_num_groups,
        "norm_eps": 1e-5,
        "cross_attention_dim": cross_attention_dim,
        "transformer_layers_per_block": transformer_layers_per_block,
        # diffusers' legacy meaning: the NUMBER OF HEADS per level (num_attention_heads stays None).
        "attention_head_dim": attention_head_dim,
        "use_linear_projection": use_linear_projection,
        "upcast_attention": upcast_attention,
    }
    if addition_time_embed_dim is not None:
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = addition_time_embed_dim
        config["projection_class_embeddings_input_dim"] = projection_class_embeddings_input_dim
    return config


SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
SDXL_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
SDXL_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
# Tiny SD1/SD2: one level with attention, a last level without (two levels keep graph compiles short;
# tiny SDXL keeps three, so an up level with attention and an upsampler is still covered there).
TINY_SD_DOWN = ["CrossAttnDownBlock2D", "DownBlock2D"]
TINY_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D"]

SDXL_TIME_EMBED_DIM = 256  # per size/crop scalar; 6 scalars -> 1536


def _full_sd15():
    return ModelSpec(
        name="sd15", family="sd1",
        unet=_unet(sample_size=64, block_out_channels=(320, 640, 1280, 1280), down_block_types=SD_DOWN,
                   up_block_types=SD_UP, attention_head_dim=8, cross_attention_dim=768,
                   use_linear_projection=False),
        vae=_vae((128, 256, 512, 512), 32, 512, SD_VAE_SCALING, False),
        text_encoders=[dict(CLIP_L)], prediction_type="epsilon", vae_scaling_factor=SD_VAE_SCALING,
        resolution=512)


def _full_sd21(v_prediction):
    size = 96 if v_prediction else 64
    return ModelSpec(
        name="sd21-v" if v_prediction else "sd21", family="sd2",
        unet=_unet(sample_size=size, block_out_channels=(320, 640, 1280, 1280), down_block_types=SD_DOWN,
                   up_block_types=SD_UP, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                   use_linear_projection=True, upcast_attention=v_prediction),
        vae=_vae((128, 256, 512, 512), 32, size * 8, SD_VAE_SCALING, False),
        text_encoders=[dict(OPENCLIP_H)], prediction_type="v_prediction" if v_prediction else "epsilon",
        vae_scaling_factor=SD_VAE_SCALING, resolution=size * 8)


def _full_sdxl():
    pooled = OPENCLIP_BIGG["projection_dim"]
    return ModelSpec(
        name="sdxl-base", family="sdxl",
        unet=_unet(sample_size=128, block_out_channels=(320, 640, 1280), down_block_types=SDXL_DOWN,
                   up_block_types=SDXL_UP, attention_head_dim=[5, 10, 20],
                   cross_attention_dim=CLIP_L["hidden_size"] + OPENCLIP_BIGG["hidden_size"],
                   use_linear_projection=True, transformer_layers_per_block=[1, 2, 10],
                   addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                   projection_class_embeddings_input_dim=pooled + 6 * SDXL_TIME_EMBED_DIM),
        vae=_vae((128, 256, 512, 512), 32, 1024, SDXL_VAE_SCALING, True),
        text_encoders=[dict(CLIP_L), dict(OPENCLIP_BIGG)], prediction_type="epsilon",
        vae_scaling_factor=SDXL_VAE_SCALING, resolution=1024)


# Tiny: 64 px images -> 8x8 latents (the VAE keeps 4 levels, so the 8x latent factor every size rule
# assumes still holds).
TINY_VAE_CHANNELS = (8, 16, 16, 16)
TINY_NORM_GROUPS = 8
TINY_CLIP_A = _clip_text(32, 64, 3, 4, "quick_gelu")
TINY_OPENCLIP_A = _clip_text(32, 64, 3, 4, "gelu", projection_dim=32)
TINY_OPENCLIP_B = _clip_text(64, 128, 3, 4, "gelu", projection_dim=64)


def _tiny_sd15():
    return ModelSpec(
        name="tiny-sd15", family="sd1",
        unet=_unet(sample_size=8, block_out_channels=(32, 64), down_block_types=TINY_SD_DOWN,
                   up_block_types=TINY_SD_UP, attention_head_dim=8,
                   cross_attention_dim=TINY_CLIP_A["hidden_size"], use_linear_projection=False,
                   norm_num_groups=TINY_NORM_GROUPS),
        vae=_vae(TINY_VAE_CHANNELS, TINY_NORM_GROUPS, 64, SD_VAE_SCALING, False),
        text_encoders=[dict(TINY_CLIP_A)], prediction_type="epsilon", vae_scaling_factor=SD_VAE_SCALING,
        resolution=64)


def _tiny_sd21(v_prediction):
    return ModelSpec(
        name="tiny-sd21-v" if v_prediction else "tiny-sd21", family="sd2",
        unet=_unet(sample_size=8, block_out_channels=(32, 64), down_block_types=TINY_SD_DOWN,
                   up_block_types=TINY_SD_UP, attention_head_dim=[2, 4],
                   cross_attention_dim=TINY_OPENCLIP_A["hidden_size"], use_linear_projection=True,
                   norm_num_groups=TINY_NORM_GROUPS, upcast_attention=v_prediction),
        vae=_vae(TINY_VAE_CHANNELS, TINY_NORM_GROUPS, 64, SD_VAE_SCALING, False),
        text_encoders=[dict(TINY_OPENCLIP_A)], prediction_type="v_prediction" if v_prediction else "epsilon",
        vae_scaling_factor=SD_VAE_SCALING, resolution=64)


def _tiny_sdxl():
    pooled = TINY_OPENCLIP_B["projection_dim"]
    return ModelSpec(
        name="tiny-sdxl", family="sdxl",
        unet=_unet(sample_size=8, block_out_channels=(32, 64, 64), down_block_types=SDXL_DOWN,
                   up_block_types=SDXL_UP, attention_head_dim=[2, 4, 4],
                   cross_attention_dim=TINY_CLIP_A["hidden_size"] + TINY_OPENCLIP_B["hidden_size"],
                   use_linear_projection=True, norm_num_groups=TINY_NORM_GROUPS,
                   transformer_layers_per_block=[1, 1, 2], addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
                   projection_class_embeddings_input_dim=pooled + 6 * SDXL_TIME_EMBED_DIM),
        vae=_vae(TINY_VAE_CHANNELS, TINY_NORM_GROUPS, 64, SDXL_VAE_SCALING, True),
        text_encoders=[dict(TINY_CLIP_A), dict(TINY_OPENCLIP_B)], prediction_type="epsilon",
        vae_scaling_factor=SDXL_VAE_SCALING, resolution=64)


_BUILDERS = {
    "sd15": _full_sd15,
    "sd21": lambda: _full_sd21(False),
    "sd21-v": lambda: _full_sd21(True),
    "sdxl-base": _full_sdxl,
    "tiny-sd15": _tiny_sd15,
    "tiny-sd21": lambda: _tiny_sd21(False),
    "tiny-sd21-v": lambda: _tiny_sd21(True),
    "tiny-sdxl": _tiny_sdxl,
}

SPEC_NAMES = tuple(_BUILDERS)


def get_spec(name):
    """A fresh ModelSpec (callers may modify its dicts) for one of SPEC_NAMES."""
    if name not in _BUILDERS:
        raise UserError(f"unknown model spec {name!r}; expected one of: {', '.join(SPEC_NAMES)}")
    return copy.deepcopy(_BUILDERS[name]())
