"""Which layers get LoRA, and their kohya names.

kohya adapts every Linear / Conv2d inside modules of certain classes (by class name) and names the adapter
`prefix + "." + module path + "." + child path` with every dot turned into an underscore. SD1/SD2 UNet paths
are diffusers paths; kohya's SDXL UNet uses LDM paths (`input_blocks.4.1...`), so SDXL UNet names go through
the checkpoint key mapping. Each target also records its diffusers-style name as an alias, so files written
with diffusers-style SDXL names load too.

`lora_weight_names` gives the same names for every Linear/Conv weight of a model held as numpy component
dicts (the tools merge LoRAs into checkpoints without building Cells); it imports no MindSpore.
"""
from dataclasses import dataclass

UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")

UNET_PREFIX = "lora_unet"


@dataclass
class LoRATarget:
    lora_name: str  # kohya name, e.g. lora_unet_input_blocks_4_1_proj_in
    alias: str  # diffusers-style name (equal to lora_name outside the SDXL UNet)
    layer: object  # the Linear / Conv2d
    part: str  # "unet" | "text_encoder"
    is_conv3x3: bool  # kernel > 1: uses conv_dim / conv_alpha
    path: str = ""  # the layer's diffusers/transformers module path in its model
    encoder_index: int = 0  # which text encoder (SDXL: 0 = CLIP-L, 1 = bigG)


def text_encoder_prefixes(count):
    """SD1/SD2: one encoder `lora_te`; SDXL: `lora_te1` (CLIP-L), `lora_te2` (bigG)."""
    return ["lora_te"] if count == 1 else [f"lora_te{i + 1}" for i in range(count)]


def _adaptable_children(root, class_names):
    """(module path, layer) for every Linear/Conv2d inside a Cell whose class name is in class_names."""
    from ..models.layers import Conv2d, Linear

    seen = set()
    for path, cell in root.cells_and_names():
        if type(cell).__name__ not in class_names or ".adapters." in f".{path}.":
            continue
        for child_path, child in cell.cells_and_names():
            if not isinstance(child, (Linear, Conv2d)) or "adapters" in child_path.split("."):
                continue
            full = f"{path}.{child_path}" if path else child_path
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield full, child


def _underscored(prefix, path):
    return f"{prefix}_{path.replace('.', '_')}"


def unet_targets(unet, unet_config, ldm_names, with_conv):
    """LoRA targets in the UNet. ldm_names: SDXL (kohya's SDXL UNet is LDM-named)."""
    classes = UNET_TARGETS + (UNET_CONV_TARGETS if with_conv else ())
    from ..models.layers import Conv2d

    targets = []
    for path, layer in _adaptable_children(unet, classes):
        alias = _underscored(UNET_PREFIX, path)
        name = alias
        if ldm_names:
            from ..checkpoints.unet_keys import diffusers_to_ldm_unet_key

            name = _underscored(UNET_PREFIX, diffusers_to_ldm_unet_key(path, unet_config))
        is_conv3x3 = isinstance(layer, Conv2d) and layer.kernel_size != 1
        targets.append(LoRATarget(name, alias, layer, "unet", is_conv3x3, path))
    return targets


def text_encoder_targets(text_encoders):
    targets = []
    for index, (prefix, encoder) in enumerate(zip(text_encoder_prefixes(len(text_encoders)), text_encoders)):
        for path, layer in _adaptable_children(encoder, TEXT_ENCODER_TARGETS):
            name = _underscored(prefix, path)
            targets.append(LoRATarget(name, name, layer, "text_encoder", False, path, index))
    return targets


def lora_weight_names(components, spec):
    """{LoRA module name: (component, encoder index, weight key)} for every Linear/Conv weight of a model.

    components: {"unet": {...}, "text_encoders": [{...}, ...]} with diffusers/transformers names (what
    `checkpoints.layout.split_single_file` returns); component is "unet" (index None) or "text_encoders". The
    SDXL UNet's weights are listed under kohya's LDM-path name and the diffusers-path alias."""
    from ..checkpoints.unet_keys import diffusers_to_ldm_unet_key

    table = {}

    def add(name, entry):
        if table.setdefault(name, entry) != entry:
            raise ValueError(f"two weights share the LoRA name {name}: {table[name]} and {entry}")

    for key, array in components["unet"].items():
        if key.endswith(".weight") and len(getattr(array, "shape", ())) in (2, 4):
            path = key[: -len(".weight")]
            add(_underscored(UNET_PREFIX, path), ("unet", None, key))
            if spec.family == "sdxl":
                add(_underscored(UNET_PREFIX, diffusers_to_ldm_unet_key(path, spec.unet)), ("unet", None, key))
    prefixes = text_encoder_prefixes(len(components["text_encoders"]))
    for index, (prefix, tensors) in enumerate(zip(prefixes, components["text_encoders"])):
        for key, array in tensors.items():
            if key.endswith(".weight") and len(getattr(array, "shape", ())) == 2:
                add(_underscored(prefix, key[: -len(".weight")]), ("text_encoders", index, key))
    return table
