"""A Stable Diffusion model as one object: spec + UNet + VAE + text encoders + tokenizers.

Also `graph_structure_key(cell)`: what every cache of compiled graphs over these models keys on.
"""
import itertools
from dataclasses import dataclass, field

from ..errors import UserError
from .clip import CLIPTextModel, CLIPTextModelWithProjection

# Tokenizer padding per family and encoder: CLIP-L pads with <|endoftext|>, OpenCLIP with "!" (id 0).
TOKENIZER_PADDING = {"sd1": ("eos",), "sd2": ("!",), "sdxl": ("eos", "!")}


@dataclass
class ModelBundle:
    spec: object  # library.models.configs.ModelSpec
    unet: object
    vae: object
    text_encoders: list = field(default_factory=list)
    tokenizers: list = field(default_factory=list)

    @property
    def family(self):
        return self.spec.family


def build_text_encoders(spec):
    """Random-weight text encoders for a spec: SDXL's second one carries the text projection."""
    expected = len(TOKENIZER_PADDING.get(spec.family, ()))
    if expected == 0:
        raise UserError(f"model spec {spec.name!r}: unknown family {spec.family!r} (expected sd1, sd2 or sdxl)")
    if len(spec.text_encoders) != expected:
        raise UserError(f"model spec {spec.name!r}: a {spec.family} model has {expected} text encoder(s), "
                        f"the spec lists {len(spec.text_encoders)}")
    encoders = []
    for index, config in enumerate(spec.text_encoders):
        with_projection = spec.family == "sdxl" and index == 1
        encoders.append(CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config))
    return encoders


def build_tokenizers(spec):
    from ..text.tokenizer import load_clip_tokenizer

    return [load_clip_tokenizer(pad=pad) for pad in TOKENIZER_PADDING[spec.family]]


def build_bundle(spec, with_tokenizers=True):
    """Random-weight Cells for every part of `spec` (a ModelSpec or a name for `configs.get_spec`).

    Weights are to be loaded afterwards (library.checkpoints) or used as is in tests.
    """
    # Imported here so the text side works even while the UNet/VAE modules are being changed.
    from .configs import get_spec
    from .unet import UNet2DConditionModel
    from .vae import AutoencoderKL

    if isinstance(spec, str):
        spec = get_spec(spec)
    text_encoders = build_text_encoders(spec)
    tokenizers = build_tokenizers(spec) if with_tokenizers else []
    return ModelBundle(spec=spec, unet=UNet2DConditionModel(spec.unet), vae=AutoencoderKL(spec.vae),
                       text_encoders=text_encoders, tokenizers=tokenizers)


_serials = itertools.count(1)


def _serial(obj):
    """A number naming `obj` for its whole life (an id() can be reused once an object is freed)."""
    serial = getattr(obj, "_graph_serial", None)
    if serial is None:
        serial = next(_serials)
        object.__setattr__(obj, "_graph_serial", serial)
    return serial


def graph_structure_key(cell):
    """A hashable key that changes whenever a graph compiled from `cell` (or from a Cell holding it) is stale.

    A compiled graph bakes in the Cells it ran, not just parameter values: the LoRA adapters in every
    layer's `adapters` list (in order) and the text encoders' new token rows. Appending or removing an
    adapter leaves the holding Cell's own MindSpore cache key unchanged, so caches of compiled Cells must
    key on this instead. Parameter values (ops.assign, multipliers, merged weights) are read live and are
    not part of the key.
    """
    parts = [_serial(cell)]
    for name, sub in cell.cells_and_names():
        adapters = getattr(sub, "adapters", None)
        if adapters is not None and len(adapters):
            parts.append((name, tuple(_serial(adapter) for adapter in adapters)))
        rows_of = getattr(sub, "new_token_rows_parameter", None)
        if callable(rows_of):
            rows = rows_of()
            parts.append((name, "new_rows", None if rows is None else (_serial(rows), tuple(rows.shape))))
    return tuple(parts)
