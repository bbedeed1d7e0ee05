"""kohya extract_lora_from_models.py in numpy: a LoRA from the difference of a tuned and an original model.

The modules are the ones kohya's LoRA network adapts (the trainer's own target list, `naming.py`; with
`conv_dim` also the ResNet blocks and up/down samplers); per module the difference of the weights is
factored by SVD: up = U S, down = Vh at rank `dim` (3x3 convs: `conv_dim`; never above the layer's in/out
channels), alpha = rank, and both factors clamped at the `clamp_quantile` quantile of their entries. The text
encoders are left out when no weight in them differs by more than `min_diff`.
"""
import dataclasses
import logging

import numpy as np

from ..errors import UserError
from .lowrank import LoRAWeights, matrix_svd, truncated_factors

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Target:
    lora_name: str
    component: str  # "unet" | "text_encoders"
    index: int  # text encoder index (0 for the UNet)
    key: str  # the weight's name in the component dict
    is_conv3x3: bool


def lora_targets(spec, with_conv):
    """kohya's LoRA modules for a model spec (text encoders first, as kohya's network lists them).

    Built from the trainer's Cells without weights (only their names and kinds are read)."""
    from ..models.bundle import build_bundle
    from ..models.layers import lazy_parameters
    from .naming import text_encoder_targets, unet_targets

    with lazy_parameters():
        bundle = build_bundle(spec, with_tokenizers=False)
    found = text_encoder_targets(bundle.text_encoders)
    found += unet_targets(bundle.unet, spec.unet, spec.family == "sdxl", with_conv)
    return [Target(t.lora_name, "unet" if t.part == "unet" else "text_encoders", t.encoder_index,
                   t.path + ".weight", t.is_conv3x3) for t in found]


def _weight(components, target, source):
    part = components["unet"] if target.component == "unet" else components["text_encoders"][target.index]
    if target.key not in part:
        raise UserError(f"{source} has no weight {target.key} (for LoRA module {target.lora_name})")
    return part[target.key]


def weight_differences(original, tuned, targets, min_diff=0.01, precision=None, sources=("original", "tuned")):
    """{lora name: tuned - original (float32)} for every target; the text encoders only when some weight in
    them differs by more than min_diff (kohya). Returns (differences, text_encoders_differ)."""
    from .merging import to_precision

    differences, text_encoder_max = {}, 0.0
    for target in targets:
        before = _weight(original, target, sources[0])
        after = _weight(tuned, target, sources[1])
        if np.shape(before) != np.shape(after):
            raise UserError(f"{target.key}: {sources[0]} has {list(np.shape(before))} but {sources[1]} has "
                            f"{list(np.shape(after))}; the models are not of one architecture")
        diff = to_precision(after, precision) - to_precision(before, precision)
        if target.component == "text_encoders":
            text_encoder_max = max(text_encoder_max, float(np.max(np.abs(diff))) if diff.size else 0.0)
        differences[target.lora_name] = diff
    text_encoders_differ = text_encoder_max > min_diff
    if text_encoders_differ:
        logger.info("text encoder is different: %s > %s", text_encoder_max, min_diff)
    else:
        logger.warning("text encoder is the same (largest difference %s <= --min_diff %s): extracting the UNet "
                       "only", text_encoder_max, min_diff)
        kept = {t.lora_name for t in targets if t.component == "unet"}
        differences = {name: diff for name, diff in differences.items() if name in kept}
    return differences, text_encoders_differ


def extract_modules(differences, targets, dim, conv_dim=None, clamp_quantile=0.99):
    """{lora name: LoRAWeights} from weight differences (kohya's rank, split and clamp)."""
    is_conv3x3 = {t.lora_name: t.is_conv3x3 for t in targets}
    modules = {}
    for name, diff in differences.items():
        rank = conv_dim if is_conv3x3[name] and conv_dim is not None else dim
        rank = min(rank, diff.shape[0], diff.shape[1])
        svd = matrix_svd(np.asarray(diff, dtype=np.float32).reshape(diff.shape[0], -1))
        up, down = truncated_factors(svd, rank, diff.shape, clamp_quantile)
        modules[name] = LoRAWeights(down, up, float(rank))
    return modules
