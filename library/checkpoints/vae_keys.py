"""VAE (AutoencoderKL) state dicts: LDM single-file layout (`first_stage_model.` stripped) <-> diffusers.

The decoder's level order is reversed between the layouts, and the mid-block attention projections are
1x1 convs `[C,C,1,1]` in LDM files but linears `[C,C]` in diffusers.
"""
import functools
import json

from .renaming import PrefixRenamer, rename_tensors

_RESNET_INNER = {"conv_shortcut": "nin_shortcut"}
_ATTENTION_INNER = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# diffusers < 0.17 folders name the mid attention projections differently.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


@functools.lru_cache(maxsize=16)
def _renamer(config_key):
    cfg = json.loads(config_key)
    levels = len(cfg["down_block_types"])
    layers = cfg["layers_per_block"]
    rows = []
    for i in range(levels):
        for j in range(layers):
            rows.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _RESNET_INNER))
        if i < levels - 1:
            rows.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", None))
    for i in range(levels):
        ldm_level = levels - 1 - i
        for j in range(layers + 1):
            rows.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{ldm_level}.block.{j}", _RESNET_INNER))
        if i < levels - 1:
            rows.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{ldm_level}.upsample.conv", None))
    for part in ("encoder", "decoder"):
        rows += [
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _RESNET_INNER),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _RESNET_INNER),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _ATTENTION_INNER),
            (f"{part}.conv_norm_out", f"{part}.norm_out", None),
            (f"{part}.conv_in", f"{part}.conv_in", None),
            (f"{part}.conv_out", f"{part}.conv_out", None),
        ]
    rows += [("quant_conv", "quant_conv", None), ("post_quant_conv", "post_quant_conv", None)]
    return PrefixRenamer(rows)


def _config_key(vae_config):
    return json.dumps({"down_block_types": list(vae_config.get("down_block_types", ["DownEncoderBlock2D"] * 4)),
                       "layers_per_block": vae_config.get("layers_per_block", 2)})


def _is_mid_projection(diffusers_name):
    return ".mid_block.attentions." in diffusers_name and diffusers_name.endswith(_PROJECTIONS)


def normalize_legacy_vae_names(tensors):
    """Rename diffusers < 0.17 attention names (`query/key/value/proj_attn`) to the current ones."""
    out = {}
    for name, array in tensors.items():
        head, _, tail = name.partition(".attentions.0.")
        if tail:
            sub, _, param = tail.partition(".")
            if sub in _LEGACY_ATTENTION:
                name = f"{head}.attentions.0.{_LEGACY_ATTENTION[sub]}.{param}"
        out[name] = array
    return out


def _conv_to_linear(_, target, array):
    return array.reshape(array.shape[:2]) if _is_mid_projection(target) and array.ndim == 4 else array


def _linear_to_conv(name, _, array):
    return array.reshape(tuple(array.shape) + (1, 1)) if _is_mid_projection(name) and array.ndim == 2 else array


def ldm_to_diffusers_vae(tensors, vae_config):
    """{LDM name: array} -> ({diffusers name: array}, [LDM names that do not map]); mid-attention 1x1 convs
    become linear weights."""
    return rename_tensors(tensors, _renamer(_config_key(vae_config)).backward, _conv_to_linear)


def diffusers_to_ldm_vae(tensors, vae_config):
    """{diffusers name: array} -> ({LDM name: array}, [diffusers names that do not map])."""
    return rename_tensors(normalize_legacy_vae_names(tensors), _renamer(_config_key(vae_config)).forward,
                          _linear_to_conv)
