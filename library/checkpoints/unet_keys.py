"""UNet key mapping between the LDM/SGM single-file layout and diffusers names.

LDM names here are relative to `model.diffusion_model.` (the caller adds/strips the prefix). Both full
parameter names (`...conv1.weight`) and module paths (`...conv1`, as LoRA names use) are mapped. The block
index rules are derived from the diffusers config (`down_block_types`, `up_block_types`,
`layers_per_block`), so SD1/SD2 (4 levels), SDXL (3 levels) and tiny test configs all map.
"""
import functools
import json

from ..errors import UserError
from .renaming import PrefixRenamer, rename_tensors

_DEFAULT_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_DEFAULT_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

# Modules outside the blocks: diffusers path -> LDM path.
_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

# Sub-modules of a ResBlock: diffusers name -> LDM name. Attention blocks keep identical inner names.
_RESNET_INNER = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _has_attention(block_type):
    return "Attn" in block_type


def _per_level(value, levels):
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * levels


def _config_key(unet_config):
    keep = ("down_block_types", "up_block_types", "layers_per_block")
    key = {k: unet_config.get(k) for k in keep}
    # diffusers' default mid block when the config does not name one; an explicit None means no mid block.
    key["mid_block_type"] = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    return json.dumps(key, sort_keys=True)


@functools.lru_cache(maxsize=32)
def _block_table(config_key):
    """[(diffusers prefix, LDM prefix, is_resnet)] for every block-level module of this UNet."""
    cfg = json.loads(config_key)
    down_types = cfg["down_block_types"] or _DEFAULT_DOWN
    up_types = cfg["up_block_types"] or _DEFAULT_UP
    levels = len(down_types)
    layers = _per_level(cfg["layers_per_block"] if cfg["layers_per_block"] is not None else 2, levels)
    table = []

    index = 1  # input_blocks.0 is conv_in
    for i, block_type in enumerate(down_types):
        for j in range(layers[i]):
            table.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0", True))
            if _has_attention(block_type):
                table.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{index}.1", False))
            index += 1
        if i < levels - 1:  # every level but the last ends with a downsampler block of its own
            table.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{index}.0.op", False))
            index += 1

    if cfg["mid_block_type"] is not None:
        table.append(("mid_block.resnets.0", "middle_block.0", True))
        table.append(("mid_block.attentions.0", "middle_block.1", False))
        table.append(("mid_block.resnets.1", "middle_block.2", True))

    up_layers = list(reversed(layers))
    index = 0
    for i, block_type in enumerate(up_types):
        attention = _has_attention(block_type)
        count = up_layers[i] + 1  # up levels have one resnet more (they also take the skip of the downsampler)
        for j in range(count):
            table.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", True))
            if attention:
                table.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1", False))
            if j == count - 1 and i < levels - 1:
                slot = 2 if attention else 1
                table.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv", False))
            index += 1

    for diffusers_name, ldm_name in _TOP_LEVEL.items():
        table.append((diffusers_name, ldm_name, False))
    return tuple(table)


@functools.lru_cache(maxsize=32)
def _renamer(config_key):
    rows = [(diff, ldm, _RESNET_INNER if is_resnet else None) for diff, ldm, is_resnet in _block_table(config_key)]
    return PrefixRenamer(rows)


def diffusers_to_ldm_unet_key(name, unet_config):
    """diffusers UNet parameter name or module path -> LDM name (without `model.diffusion_model.`)."""
    found = _renamer(_config_key(unet_config)).forward(name)
    if found is None:
        raise UserError(f"UNet key '{name}' has no LDM equivalent for this UNet config "
                        f"(down_block_types {unet_config.get('down_block_types')})")
    return found


def ldm_to_diffusers_unet_key(name, unet_config):
    """LDM UNet name (without `model.diffusion_model.`) or module path -> diffusers name."""
    found = _renamer(_config_key(unet_config)).backward(name)
    if found is None:
        raise UserError(f"UNet key '{name}' has no diffusers equivalent for this UNet config "
                        f"(down_block_types {unet_config.get('down_block_types')})")
    return found


def _is_projection_weight(name):
    return ".attentions." in name and name.endswith(("proj_in.weight", "proj_out.weight"))


def _fit_projection(name, array, unet_config):
    """proj_in/proj_out are [C,C] (linear) or [C,C,1,1] (conv) by config; files of either kind load."""
    if not _is_projection_weight(name):
        return array
    if unet_config.get("use_linear_projection", False):
        return array.reshape(array.shape[:2]) if array.ndim == 4 else array
    return array.reshape(tuple(array.shape) + (1, 1)) if array.ndim == 2 else array


def ldm_to_diffusers_unet(tensors, unet_config):
    """{LDM name (prefix stripped): array} -> ({diffusers name: array}, [LDM names that do not map])."""
    renamer = _renamer(_config_key(unet_config))
    return rename_tensors(tensors, renamer.backward,
                          lambda _, target, array: _fit_projection(target, array, unet_config))


def diffusers_to_ldm_unet(tensors, unet_config):
    """{diffusers name: array} -> ({LDM name (no prefix): array}, [diffusers names that do not map])."""
    return rename_tensors(tensors, _renamer(_config_key(unet_config)).forward)
