"""What the shapes of a single file say about its architecture, in a form comparable with a ModelSpec.

Only facts that shapes determine are compared (channels, levels, attention placement, depths, context
width, encoder widths and layer counts). Head counts and GroupNorm group counts are invisible in the
weights, which is why an unknown architecture needs `--model_config`.
"""
from .clip_keys import with_text_model_prefix
from .layout import SD2_EXTRA_OPENCLIP_LAYERS, TEXT_ENCODER_LAYOUTS, UNET_PREFIX, VAE_PREFIX, with_projection


def _take(tensors, prefix):
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}


def _count(tensors, pattern):
    count = 0
    while pattern.format(count) in tensors:
        count += 1
    return count


def unet_structure_from_file(tensors):
    t = _take(tensors, UNET_PREFIX)
    if "input_blocks.0.0.weight" not in t:
        return None
    channels, attention, layers, depth = [], [], [], []
    level = None
    index = 1
    while True:
        if f"input_blocks.{index}.0.op.weight" in t:  # downsampler closes the level
            level, index = None, index + 1
            continue
        conv = t.get(f"input_blocks.{index}.0.in_layers.2.weight")
        if conv is None:
            break
        if level is None:
            level = len(channels)
            channels.append(int(conv.shape[0]))
            blocks = _count(t, f"input_blocks.{index}.1.transformer_blocks.{{}}.norm1.weight")
            attention.append(blocks > 0)
            depth.append(blocks or None)
            layers.append(0)
        layers[level] += 1
        index += 1
    first_attention = next((k for k in t if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    proj_in = next((k for k in t if k.endswith(".1.proj_in.weight")), None)
    label = t.get("label_emb.0.0.weight")
    return {
        "in_channels": int(t["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(t["out.2.weight"].shape[0]) if "out.2.weight" in t else None,
        "block_out_channels": channels,
        "attention": attention,
        "layers_per_block": layers,
        "transformer_depth": depth,
        "cross_attention_dim": int(t[first_attention].shape[1]) if first_attention else None,
        "use_linear_projection": (t[proj_in].ndim == 2) if proj_in else None,
        "addition_input_dim": int(label.shape[1]) if label is not None else None,
    }


def unet_structure_of_config(config):
    down = config.get("down_block_types")
    levels = len(down)
    per_level = config.get("layers_per_block", 2)
    layers = list(per_level) if isinstance(per_level, (list, tuple)) else [per_level] * levels
    depth_cfg = config.get("transformer_layers_per_block", 1)
    depths = list(depth_cfg) if isinstance(depth_cfg, (list, tuple)) else [depth_cfg] * levels
    attention = ["Attn" in block for block in down]
    text_time = config.get("addition_embed_type") == "text_time"
    return {
        "in_channels": config.get("in_channels", 4),
        "out_channels": config.get("out_channels", 4),
        "block_out_channels": list(config["block_out_channels"]),
        "attention": attention,
        "layers_per_block": layers,
        "transformer_depth": [d if a else None for d, a in zip(depths, attention)],
        "cross_attention_dim": config.get("cross_attention_dim") if any(attention) else None,
        "use_linear_projection": bool(config.get("use_linear_projection", False)) if any(attention) else None,
        "addition_input_dim": config.get("projection_class_embeddings_input_dim") if text_time else None,
    }


def vae_structure_from_file(tensors):
    t = _take(tensors, VAE_PREFIX)
    if "encoder.conv_in.weight" not in t:
        return None
    levels = _count(t, "encoder.down.{}.block.0.conv1.weight")
    return {
        "in_channels": int(t["encoder.conv_in.weight"].shape[1]),
        "block_out_channels": [int(t[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)],
        "layers_per_block": _count(t, "encoder.down.0.block.{}.conv1.weight"),
        "latent_channels": int(t["decoder.conv_in.weight"].shape[1]) if "decoder.conv_in.weight" in t else None,
    }


def vae_structure_of_config(config):
    return {"in_channels": config.get("in_channels", 3), "block_out_channels": list(config["block_out_channels"]),
            "layers_per_block": config.get("layers_per_block", 2),
            "latent_channels": config.get("latent_channels", 4)}


def _hf_text_structure(t):
    t = with_text_model_prefix(t)
    embedding = t.get("text_model.embeddings.token_embedding.weight")
    if embedding is None:
        return None
    fc1 = t.get("text_model.encoder.layers.0.mlp.fc1.weight")
    projection = t.get("text_projection.weight")
    return {"vocab_size": int(embedding.shape[0]), "hidden_size": int(embedding.shape[1]),
            "max_position_embeddings": _rows(t.get("text_model.embeddings.position_embedding.weight")),
            "num_hidden_layers": _count(t, "text_model.encoder.layers.{}.layer_norm1.weight"),
            "intermediate_size": _rows(fc1), "projection_dim": _rows(projection)}


def _openclip_text_structure(t, family, index):
    embedding = t.get("token_embedding.weight")
    if embedding is None:
        return None
    layers = _count(t, "transformer.resblocks.{}.ln_1.weight")
    if family == "sd2":
        # OpenCLIP/kohya files keep ViT-H's last layer (dropped on import), files converted by diffusers'
        # script do not: both fit the encoder config.
        layers = (layers - SD2_EXTRA_OPENCLIP_LAYERS, layers)
    projection = t.get("text_projection")
    return {"vocab_size": int(embedding.shape[0]), "hidden_size": int(embedding.shape[1]),
            "max_position_embeddings": _rows(t.get("positional_embedding")),
            "num_hidden_layers": layers,
            "intermediate_size": _rows(t.get("transformer.resblocks.0.mlp.c_fc.weight")),
            "projection_dim": int(projection.shape[1]) if with_projection(family, index) and projection is not None
            else None}


def _rows(array):
    return int(array.shape[0]) if array is not None else None


def text_structures_from_file(tensors, family):
    out = []
    for index, (naming, prefix) in enumerate(TEXT_ENCODER_LAYOUTS[family]):
        part = _take(tensors, prefix)
        out.append(_hf_text_structure(part) if naming == "hf" else _openclip_text_structure(part, family, index))
    return out


def text_structure_of_config(config, family, index):
    return {"vocab_size": config.get("vocab_size", 49408), "hidden_size": config["hidden_size"],
            "max_position_embeddings": config.get("max_position_embeddings", 77),
            "num_hidden_layers": config["num_hidden_layers"],
            "intermediate_size": config.get("intermediate_size"),
            "projection_dim": config.get("projection_dim") if with_projection(family, index) else None}


def file_structure(tensors, family):
    return {"unet": unet_structure_from_file(tensors), "vae": vae_structure_from_file(tensors),
            "text_encoders": text_structures_from_file(tensors, family)}


def spec_structure(spec):
    return {"unet": unet_structure_of_config(spec.unet), "vae": vae_structure_of_config(spec.vae),
            "text_encoders": [text_structure_of_config(c, spec.family, i) for i, c in enumerate(spec.text_encoders)]}


def differences(found, expected):
    """Human-readable differences between a file's structure and a spec's, ignoring absent components."""
    out = []
    for part in ("unet", "vae"):
        out += _diff(part, found[part], expected[part])
    for index, (got, want) in enumerate(zip(found["text_encoders"], expected["text_encoders"])):
        out += _diff(f"text encoder {index + 1}", got, want)
    return out


def _diff(part, got, want):
    if got is None:
        return []
    return [f"{part} {key}: file {got[key]} vs {want.get(key)}" for key in got
            if got[key] is not None and not _fits(got[key], want.get(key))]


def _fits(found, expected):
    """A file value fits the spec's; a tuple lists several values the file is compatible with."""
    return expected in found if isinstance(found, tuple) else found == expected
