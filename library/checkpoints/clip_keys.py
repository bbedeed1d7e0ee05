"""Text-encoder state dicts: single-file layouts <-> transformers CLIP names (`text_model.` prefixed).

Two single-file layouts exist:
- HF CLIP names (SD1 `cond_stage_model.transformer.`, SDXL TE1 `conditioner.embedders.0.transformer.`),
  identical to transformers' names; old SD1 files lack `text_model.`.
- OpenCLIP names (SD2 `cond_stage_model.model.`, SDXL TE2 `conditioner.embedders.1.model.`): fused q/k/v
  `in_proj_*`, `ln_1/ln_2`, `mlp.c_fc/c_proj`, and a `text_projection` used as `x @ P`, i.e. the TRANSPOSE
  of the HF Linear weight.
transformers >= 5.6 saves CLIPTextModel without the `text_model.` prefix; `with_text_model_prefix` reads both.
"""
import numpy as np

_HF_TOP_LEVEL = ("embeddings.", "encoder.", "final_layer_norm.")

# OpenCLIP resblock sub-module -> HF encoder-layer sub-module (q/k/v handled separately).
_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPENCLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def with_text_model_prefix(tensors):
    """Names as `text_model.…` (old SD1 files and transformers >= 5.6 folders omit it); drop position_ids."""
    out = {}
    for name, array in tensors.items():
        if name.endswith("position_ids"):
            continue  # a buffer, not a weight; modern transformers does not store it
        if name.startswith(_HF_TOP_LEVEL):
            name = "text_model." + name
        out[name] = array
    return out


def hf_clip_from_single_file(tensors):
    """HF-named encoder (prefix stripped) -> ({name: array}, [names that do not map])."""
    converted, unmapped = {}, []
    for name, array in with_text_model_prefix(tensors).items():
        if name.startswith("text_model.") or name == "text_projection.weight":
            converted[name] = array
        else:
            unmapped.append(name)
    return converted, unmapped


def hf_clip_to_single_file(tensors):
    return dict(with_text_model_prefix(tensors))


def openclip_to_hf(tensors, text_config, with_projection):
    """OpenCLIP encoder (prefix stripped) -> ({HF name: array}, [names that do not map], extras).

    Resblocks at or beyond the config's `num_hidden_layers` are dropped (SD2: OpenCLIP's 24th layer is not
    part of diffusers' 23-layer encoder). `text_projection` is transposed into `text_projection.weight` when
    the model has one, else dropped. extras keeps `logit_scale` for writing the file back.
    """
    layers = text_config["num_hidden_layers"]
    converted, unmapped, extras = {}, [], {}
    for name, array in tensors.items():
        if name in _OPENCLIP_TOP:
            converted[_OPENCLIP_TOP[name]] = array
        elif name == "text_projection":
            if with_projection:
                converted["text_projection.weight"] = np.ascontiguousarray(np.asarray(array).T)
        elif name == "logit_scale":
            extras["logit_scale"] = array
        elif name.startswith("transformer.resblocks."):
            index, _, rest = name[len("transformer.resblocks."):].partition(".")
            if not index.isdigit() or not _convert_resblock_entry(int(index), rest, array, layers, converted):
                unmapped.append(name)
        else:
            unmapped.append(name)
    return converted, unmapped, extras


def _convert_resblock_entry(index, rest, array, layers, converted):
    """Adds the HF entries for one resblock tensor; False when `rest` is not a known OpenCLIP name."""
    prefix = f"text_model.encoder.layers.{index}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        if index < layers:
            kind = "weight" if rest.endswith("weight") else "bias"
            for part, piece in zip(_QKV, np.split(np.asarray(array), 3, axis=0)):
                converted[f"{prefix}self_attn.{part}.{kind}"] = piece
        return True
    module, _, param = rest.rpartition(".")
    if module not in _OPENCLIP_LAYER or param not in ("weight", "bias"):
        return False
    if index < layers:
        converted[f"{prefix}{_OPENCLIP_LAYER[module]}.{param}"] = array
    return True


def hf_to_openclip(tensors, text_config, extra_layers=0, logit_scale=None):
    """HF encoder -> OpenCLIP names (prefix not added), returns ({name: array}, [names that do not map]).

    extra_layers > 0 fabricates that many resblocks after the last one by copying it, and a missing
    `text_projection` becomes ones - what kohya writes for SD2, whose diffusers encoder lacks OpenCLIP's
    last layer and projection (so the file has the 24-layer OpenCLIP shape other tools expect).
    """
    tensors = with_text_model_prefix(tensors)
    top = {hf: oc for oc, hf in _OPENCLIP_TOP.items()}
    layer_names = {hf: oc for oc, hf in _OPENCLIP_LAYER.items()}
    out, unmapped, fused = {}, [], {}
    for name, array in tensors.items():
        if name in top:
            out[top[name]] = array
        elif name == "text_projection.weight":
            out["text_projection"] = np.ascontiguousarray(np.asarray(array).T)
        elif name.startswith("text_model.encoder.layers."):
            index, _, rest = name[len("text_model.encoder.layers."):].partition(".")
            module, _, param = rest.rpartition(".")
            base = f"transformer.resblocks.{index}."
            if module.startswith("self_attn.") and module[len("self_attn."):] in _QKV:
                fused.setdefault((index, param), {})[module[len("self_attn."):]] = array
            elif module in layer_names:
                out[f"{base}{layer_names[module]}.{param}"] = array
            else:
                unmapped.append(name)
        else:
            unmapped.append(name)
    for (index, param), parts in fused.items():
        if len(parts) != 3:
            unmapped += [f"text_model.encoder.layers.{index}.self_attn.{p}.{param}" for p in parts]
            continue
        stacked = np.concatenate([np.asarray(parts[p]) for p in _QKV], axis=0)
        out[f"transformer.resblocks.{index}.attn.in_proj_{param}"] = stacked
    _fabricate_layers(out, text_config, extra_layers)
    out["logit_scale"] = np.asarray(1.0 if logit_scale is None else logit_scale, dtype=np.float32)
    return out, unmapped


def _fabricate_layers(out, text_config, extra_layers):
    if extra_layers <= 0:
        return
    last = text_config["num_hidden_layers"] - 1
    source = f"transformer.resblocks.{last}."
    for name in [n for n in out if n.startswith(source)]:
        for k in range(1, extra_layers + 1):
            out[f"transformer.resblocks.{last + k}." + name[len(source):]] = np.array(out[name], copy=True)
    if "text_projection" not in out:
        width = text_config["hidden_size"]
        out["text_projection"] = np.ones((width, width), dtype=np.float32)
