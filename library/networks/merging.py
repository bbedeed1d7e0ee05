"""Merging LoRAs: into a model's weights, or into one LoRA (kohya's sum, concatenation, SVD), in numpy.

- into a model (kohya merge_lora.py --sd_model): W += ratio * alpha / r * up @ down for every module, LoRA
  after LoRA, in the merge precision;
- kohya's LoRA + LoRA merge: the factors are summed, down * sqrt(alpha / base_alpha) * ratio and up * |that|,
  which is exact only for one LoRA; every file needs the first file's ranks;
- concatenation: the factors side by side, each scaled by sqrt(|ratio * alpha / r|) (sign on down), alpha =
  the new rank: the merged delta is exactly the sum of the deltas;
- SVD (kohya svd_merge_lora.py): the summed deltas truncated to the new rank (up = U S, down = Vh), alpha =
  the rank, factors clamped at kohya's 0.99 quantile.
"""
import numpy as np

from ..errors import UserError
from ..formats.safetensors_io import Bf16Tensor
from .lowrank import LoRAWeights, low_rank_svd, truncated_factors

PRECISIONS = ("float", "fp16", "bf16")
SVD_CLAMP_QUANTILE = 0.99
SHOWN = 5


def to_precision(array, precision):
    """Values rounded to the merge precision (kept as float32 arrays): kohya computes in that dtype."""
    array = np.asarray(array, dtype=np.float32)
    if precision in (None, "float", "fp32"):
        return array
    if precision == "fp16":
        return array.astype(np.float16).astype(np.float32)
    if precision == "bf16":
        return Bf16Tensor.from_float32(array).to_float32().reshape(array.shape)
    raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _rounded(module, precision):
    return LoRAWeights(to_precision(module.down, precision), to_precision(module.up, precision),
                       float(to_precision(module.alpha, precision)))

# ----------------------------------------------------------------------------------------------- into a model


def _fit(delta, weight, name, key):
    if delta.shape == weight.shape:
        return delta
    if delta.size == weight.size:  # a 1x1 conv LoRA on a Linear (or back): kohya squeezes the same way
        return delta.reshape(weight.shape)
    raise UserError(f"LoRA module {name} makes a {list(delta.shape)} change but the model's {key} is "
                    f"{list(weight.shape)}: the LoRA was trained on another model")


def merge_into_components(components, table, modules, ratio, precision="float", source="LoRA file"):
    """Add each module's delta (times ratio) to the weight its name resolves to in `table`
    (naming.lora_weight_names). Returns the number of modules merged. Nothing changes on an error."""
    unknown = sorted(name for name in modules if name not in table)
    if unknown:
        raise UserError(f"{source}: {len(unknown)} of its {len(modules)} LoRA modules name no weight of this "
                        f"model, e.g. {', '.join(unknown[:SHOWN])} (a LoRA for another model?)")
    updates = []
    for name, module in modules.items():
        part, index, key = table[name]
        target = components["unet"] if part == "unet" else components["text_encoders"][index]
        weight = target[key]
        delta = _fit(_rounded(module, precision).delta(ratio), weight, name, key)
        updates.append((target, key, weight, delta))
    for target, key, weight, delta in updates:
        # (applied in order: a file naming one weight twice, by LDM and diffusers name, adds both)
        target[key] = to_precision(to_precision(target[key], precision) + delta, precision)
    return len(updates)

# ----------------------------------------------------------------------------------------------- LoRA + LoRA


def merge_kohya(inputs, precision="float"):
    """kohya merge_lora.py without --sd_model or --concat. inputs: [(modules, ratio, source)]."""
    base = {}
    out_down, out_up = {}, {}
    for modules, ratio, source in inputs:
        for name, module in modules.items():
            module = _rounded(module, precision)
            base_alpha, base_rank = base.setdefault(name, (module.alpha, module.rank))
            if name in out_down and out_down[name].shape != module.down.shape:
                raise UserError(f"{source}: module {name} has rank {module.rank} but the first file's has "
                                f"{base_rank}; files of different ranks merge with --concat or svd_merge_lora.py")
            scale = np.sqrt(module.alpha / base_alpha) * ratio
            out_down[name] = out_down.get(name, 0) + module.down * scale
            out_up[name] = out_up.get(name, 0) + module.up * abs(scale)
    return {name: LoRAWeights(to_precision(out_down[name], precision), to_precision(out_up[name], precision),
                              base[name][0]) for name in out_down}


def merge_concat(inputs, precision="float"):
    """The factors side by side: the merged delta is exactly sum(ratio * delta). alpha = the new rank."""
    pieces = {}
    for modules, ratio, source in inputs:
        for name, module in modules.items():
            module = _rounded(module, precision)
            if name in pieces and pieces[name][0][2].shape[1:] != module.down.shape[1:]:
                raise UserError(f"{source}: module {name} has lora_down {list(module.down.shape)}, which does not "
                                f"fit the earlier file's {list(pieces[name][0][2].shape)} (another model?)")
            pieces.setdefault(name, []).append((ratio * module.scale, module.up, module.down))
    merged = {}
    for name, parts in pieces.items():
        down = np.concatenate([np.sign(c) * np.sqrt(abs(c)) * d for c, _, d in parts], axis=0)
        up = np.concatenate([np.sqrt(abs(c)) * u for c, u, _ in parts], axis=1)
        merged[name] = LoRAWeights(to_precision(down, precision), to_precision(up, precision), float(down.shape[0]))
    return merged


def shuffle_ranks(modules, rng):
    """kohya --shuffle: the same permutation of the rank channels of down and up (the delta is unchanged)."""
    out = {}
    for name, module in modules.items():
        order = rng.permutation(module.rank)
        out[name] = LoRAWeights(module.down[order], module.up[:, order], module.alpha)
    return out


def merge_svd(inputs, new_rank, new_conv_rank=None, precision="float", clamp_quantile=SVD_CLAMP_QUANTILE):
    """kohya svd_merge_lora.py: per module, the sum of ratio * delta truncated to new_rank (3x3 convs:
    new_conv_rank, default new_rank; never above the layer's in/out channels or the summed rank)."""
    new_conv_rank = new_rank if new_conv_rank is None else new_conv_rank
    pairs, shapes = {}, {}
    for modules, ratio, source in inputs:
        for name, module in modules.items():
            module = _rounded(module, precision)
            if shapes.setdefault(name, module.delta_shape) != module.delta_shape:
                raise UserError(f"{source}: module {name} changes a {list(module.delta_shape)} weight but an earlier "
                                f"file's changes {list(shapes[name])} (LoRAs for different models?)")
            pairs.setdefault(name, []).append((ratio * module.scale, module.up_matrix(), module.down_matrix()))
    merged = {}
    for name, parts in pairs.items():
        shape = shapes[name]
        is_conv3x3 = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
        rank = min(new_conv_rank if is_conv3x3 else new_rank, shape[0], shape[1])
        svd = low_rank_svd(parts)
        up, down = truncated_factors(svd, rank, shape, clamp_quantile)
        merged[name] = LoRAWeights(to_precision(down, precision), to_precision(up, precision),
                                   float(down.shape[0]))
    return merged
