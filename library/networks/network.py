"""A LoRA network: the set of LoRA modules for one model (kohya's `networks.lora.LoRANetwork`).

Not a Cell itself: once applied, every module lives in its target layer's `adapters` list, so the model's
own parameter tree (and graph) is the only owner. The network keeps the list, the kohya names, and does what
kohya's network does: apply/remove, state_dict in kohya keys, load (with aliases and clear errors), parameter
groups for `--unet_lr` / `--text_encoder_lr` (+ LoRA+), max-norm regularisation and merging.
"""
import itertools
import time

import numpy as np
from mindspore import Parameter, Tensor

from ..errors import UserError
from .family import check_family, describe
from .lora import LoRAModule, lora_delta, write_param
from .naming import text_encoder_targets, unet_targets

KEY_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


_recompile_counter = itertools.count(1)


def invalidate_compiled_graphs(roots):
    """Make every Cell under `roots` compile again on its next call.

    MindSpore caches a Cell's graph under a key made of its creation time and id; appending to or removing
    from an `adapters` list does not change that key, so the stale graph (without / with the LoRA) would run.
    """
    stamp = time.time_ns() + next(_recompile_counter)
    for root in roots:
        for _, cell in root.cells_and_names():
            object.__setattr__(cell, "_create_time", stamp)


def split_key(key):
    """'lora_unet_x.lora_down.weight' -> ('lora_unet_x', '.lora_down.weight')."""
    for suffix in KEY_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


def dims_from_weights(tensors):
    """--dim_from_weights: rank = lora_down rows, alpha from `.alpha` (missing -> rank), per module name."""
    dims, alphas = {}, {}
    for key, value in tensors.items():
        name, suffix = split_key(key)
        if suffix == ".lora_down.weight":
            dims[name] = int(np.shape(value)[0])
    for name, dim in dims.items():
        alpha = tensors.get(name + ".alpha")
        alphas[name] = float(np.asarray(alpha).reshape(())) if alpha is not None else float(dim)
    return dims, alphas


class LoRANetwork:
    def __init__(self, unet, text_encoders, family, unet_config, multiplier=1.0, network_dim=4, network_alpha=1.0,
                 dropout=None, rank_dropout=None, module_dropout=None, conv_dim=None, conv_alpha=None,
                 modules_dim=None, modules_alpha=None, train_unet=True, train_text_encoder=True,
                 loraplus_lr_ratio=None, loraplus_unet_lr_ratio=None, loraplus_text_encoder_lr_ratio=None,
                 seed=None):
        self.family = family
        self.multiplier = float(multiplier)
        self.network_dim = 4 if network_dim is None else int(network_dim)
        self.network_alpha = 1.0 if network_alpha is None else float(network_alpha)
        self.conv_dim = conv_dim
        self.conv_alpha = conv_alpha
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.loraplus_unet_lr_ratio = loraplus_unet_lr_ratio
        self.loraplus_text_encoder_lr_ratio = loraplus_text_encoder_lr_ratio
        self.skipped = []
        self.batch_multiplier = None
        self.roots = [cell for cell in [unet] + list(text_encoders or []) if cell is not None]
        rng = np.random.RandomState(seed) if seed is not None else np.random
        module_kwargs = dict(multiplier=multiplier, dropout=dropout, rank_dropout=rank_dropout,
                             module_dropout=module_dropout, rng=rng)

        targets = []
        if train_text_encoder and text_encoders:
            targets += text_encoder_targets(text_encoders)
        if train_unet and unet is not None:
            with_conv = conv_dim is not None or modules_dim is not None
            targets += unet_targets(unet, unet_config, family == "sdxl", with_conv)

        self.text_encoder_loras, self.unet_loras = [], []
        self.aliases = {}
        for target in targets:
            dim, alpha = self._dim_for(target, modules_dim, modules_alpha)
            if not dim:
                self.skipped.append(target.lora_name)
                continue
            if target.lora_name in self.aliases:
                raise ValueError(f"duplicate LoRA module name {target.lora_name}")
            module = LoRAModule(target.lora_name, target.layer, dim, alpha, **module_kwargs)
            module.module_path, module.encoder_index = target.path, target.encoder_index
            (self.unet_loras if target.part == "unet" else self.text_encoder_loras).append(module)
            self.aliases[target.lora_name] = module
            self.aliases.setdefault(target.alias, module)
        self.applied = False

    def _dim_for(self, target, modules_dim, modules_alpha):
        if modules_dim is not None:
            for name in (target.lora_name, target.alias):
                if name in modules_dim:
                    return modules_dim[name], (modules_alpha or {}).get(name, modules_dim[name])
            return None, None
        if target.is_conv3x3:
            return self.conv_dim, self.conv_alpha
        return self.network_dim, self.network_alpha

    @property
    def modules(self):
        return self.text_encoder_loras + self.unet_loras

    def __len__(self):
        return len(self.modules)

    # ------------------------------------------------------------------ apply / remove

    def apply(self):
        """Append every module to its target's adapters; name its parameters by kohya key (unique names)."""
        if self.applied:
            return self
        for module in self.modules:
            module.target.layer.adapters.append(module)
            module.lora_down.weight.name = f"{module.lora_name}.lora_down.weight"
            module.lora_up.weight.name = f"{module.lora_name}.lora_up.weight"
            module.multiplier_scale.name = f"{module.lora_name}.multiplier_scale"
        if self.batch_multiplier is not None:  # (appending renames it after the adapter's path)
            self.batch_multiplier.name = "lora_batch_multiplier"
        invalidate_compiled_graphs(self.roots)
        self.applied = True
        return self

    def remove(self):
        for module in self.modules:
            adapters = module.target.layer.adapters
            for index in reversed(range(len(adapters))):
                if adapters[index] is module:
                    del adapters[index]
        invalidate_compiled_graphs(self.roots)
        self.applied = False
        return self

    def set_multiplier(self, multiplier):
        self.multiplier = float(multiplier)
        for module in self.modules:
            module.set_multiplier(multiplier)

    def enable_batch_multiplier(self):
        """Give every module one shared scalar multiplier that `set_batch_multiplier` changes with one write
        (kohya's per-batch set_multiplier for datasets' network_multiplier) without recompiling. Changes the
        graphs: call it before they compile."""
        if self.batch_multiplier is None:
            self.batch_multiplier = Parameter(Tensor(np.float32(1.0)), name="lora_batch_multiplier",
                                              requires_grad=False)
            for module in self.modules:
                module.batch_multiplier = self.batch_multiplier
            self.batch_multiplier.name = "lora_batch_multiplier"  # (setting it on a module renamed it)
            if self.applied:
                invalidate_compiled_graphs(self.roots)
        return self.batch_multiplier

    def set_batch_multiplier(self, multiplier):
        write_param(self.batch_multiplier, multiplier)

    def merge_into_base(self, multiplier=None):
        """Add every module's delta to its target's weight (use without apply(), or remove() first)."""
        for module in self.modules:
            module.merge_into_base(multiplier)

    # ------------------------------------------------------------------ weights in kohya keys

    def state_dict(self, dtype=None):
        out = {}
        for module in self.modules:
            out[module.lora_name + ".lora_down.weight"] = module.down_weight()
            out[module.lora_name + ".lora_up.weight"] = module.up_weight()
            out[module.lora_name + ".alpha"] = np.array(module.alpha, dtype=np.float32)
        if dtype is not None:
            out = {k: v.astype(dtype) for k, v in out.items()}
        return out

    def load_state_dict(self, tensors, metadata=None, source="LoRA weights", strict=False):
        """Load kohya-keyed arrays (kohya or diffusers-style module names). Returns (missing, unexpected).

        Raises UserError for a file made for another model family, shape mismatches, or no module in common.
        """
        file_family = check_family(tensors, metadata, self.family, source)
        grouped = {}
        for key, value in tensors.items():
            name, suffix = split_key(key)
            grouped.setdefault(name, {})[suffix] = value
        loaded, unexpected, mismatched = set(), [], []
        for name, parts in grouped.items():
            module = self.aliases.get(name)
            if module is None or ".lora_down.weight" not in parts or ".lora_up.weight" not in parts:
                unexpected.append(name)
                continue
            try:
                module.set_weights(parts[".lora_down.weight"], parts[".lora_up.weight"],
                                   parts.get(".alpha", module.rank))
            except ValueError as e:
                mismatched.append(str(e))
                continue
            loaded.add(module.lora_name)
        missing = [m.lora_name for m in self.modules if m.lora_name not in loaded]
        if mismatched:
            stated = f" (its metadata says {describe(file_family)})" if file_family else ""
            raise UserError(f"{source}{stated} does not fit this {describe(self.family)} model: {len(mismatched)} "
                            f"shape mismatch(es), e.g. {'; '.join(mismatched[:3])}")
        if not loaded and grouped:
            raise UserError(f"{source}: none of its {len(grouped)} LoRA modules matches this {self.family} model "
                            f"(e.g. {', '.join(sorted(grouped)[:3])})")
        if strict and (missing or unexpected):
            raise UserError(f"{source}: {len(missing)} module(s) missing (e.g. {', '.join(missing[:3])}), "
                            f"{len(unexpected)} unexpected (e.g. {', '.join(sorted(unexpected)[:3])})")
        return missing, sorted(unexpected)

    # ------------------------------------------------------------------ training

    def trainable_params(self, text_encoder_lr=None, unet_lr=None, default_lr=None):
        """Optimizer groups [{'params', 'lr'}] and their labels ('textencoder', 'unet', + ' plus' for LoRA+).

        kohya: a part's lr is its own option, else the default lr; groups whose lr is 0/None are dropped.
        """
        if isinstance(text_encoder_lr, (list, tuple)):
            text_encoder_lr = text_encoder_lr[0] if text_encoder_lr else None  # networks.lora uses the first
        groups, labels = [], []
        parts = (("textencoder", self.text_encoder_loras, text_encoder_lr,
                  self.loraplus_text_encoder_lr_ratio or self.loraplus_lr_ratio),
                 ("unet", self.unet_loras, unet_lr, self.loraplus_unet_lr_ratio or self.loraplus_lr_ratio))
        for label, modules, lr, ratio in parts:
            lr = default_lr if lr is None else lr
            plain = [p for m in modules for p in (m.trainable() if ratio is None else [m.lora_down.weight])]
            plus = [m.lora_up.weight for m in modules] if ratio is not None else []
            plus_lr = lr * ratio if lr is not None and ratio is not None else None
            for params, group_lr, suffix in ((plain, lr, ""), (plus, plus_lr, " plus")):
                if params and group_lr:
                    groups.append({"params": params, "lr": float(group_lr)})
                    labels.append(label + suffix)
        return groups, labels

    def parameters(self):
        return [p for m in self.modules for p in m.trainable()]

    def apply_max_norm_regularization(self, max_norm):
        """kohya's --scale_weight_norms: scale up and down by sqrt(ratio) where ||alpha/r up@down|| > max_norm.

        Returns (keys_scaled, mean_norm, max_norm_after)."""
        keys_scaled, norms = 0, []
        for module in self.modules:
            down, up = module.down_weight(), module.up_weight()
            norm = float(np.linalg.norm(lora_delta(down, up, module.scale)))
            clamped = max(norm, max_norm / 2)
            ratio = min(clamped, max_norm) / clamped
            if ratio != 1:
                keys_scaled += 1
                root = np.float32(ratio ** 0.5)
                write_param(module.lora_down.weight, down * root)
                write_param(module.lora_up.weight, up * root)
            norms.append(norm * ratio)
        if not norms:
            return 0, 0.0, 0.0
        return keys_scaled, sum(norms) / len(norms), max(norms)
