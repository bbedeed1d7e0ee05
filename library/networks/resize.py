"""kohya resize_lora.py in numpy: each module's delta re-factored at a lower rank by SVD.

Per module the singular values S of up @ down (the delta without its scale) give the new rank: `new_rank`
(conv modules, 1x1 included as kohya: `new_conv_rank`), or a dynamic choice capped at it (sv_ratio: singular
values above S[0] / param; sv_cumulative: the share of sum(S) reaching param; sv_fro: the share of the
Frobenius norm reaching param).
The new factors are up = U S, down = Vh with alpha = scale * new rank, so the delta is the rank-r truncation
of the original delta. A module whose rank would not go down is kept as it is (kohya pads it to the new rank).
"""
import dataclasses

import numpy as np

from .lowrank import DYNAMIC_METHODS, LoRAWeights, choose_rank, factored_svd, retained, truncated_factors


@dataclasses.dataclass
class ResizedModule:
    name: str
    old_rank: int
    new_rank: int
    new_alpha: float
    sum_retained: float
    fro_retained: float
    max_ratio: float
    unchanged: bool

    def verbose_line(self, dynamic):
        line = (f"{self.name:75} | sum(S) retained: {self.sum_retained:.1%}, fro retained: "
                f"{self.fro_retained:.1%}, max(S) ratio: {self.max_ratio:0.1f}")
        if dynamic:
            line += f", dynamic | dim: {self.new_rank}, alpha: {self.new_alpha}"
        return line + (" (unchanged)" if self.unchanged else "")


def resize_module(name, module, max_rank, dynamic_method=None, dynamic_param=None):
    """(new LoRAWeights, ResizedModule report) for one module."""
    svd = factored_svd(module.up_matrix(), module.down_matrix())
    s = svd.padded_s()
    rank = choose_rank(s, max_rank, dynamic_method, dynamic_param)
    sum_kept, fro_kept, ratio = retained(s, rank)
    if rank >= module.rank:
        report = ResizedModule(name, module.rank, module.rank, module.alpha, sum_kept, fro_kept, ratio, True)
        return module, report
    up, down = truncated_factors(svd, rank, module.delta_shape)
    new_alpha = float(module.scale * rank)
    report = ResizedModule(name, module.rank, rank, new_alpha, sum_kept, fro_kept, ratio, False)
    return LoRAWeights(down, up, new_alpha), report


def resize_modules(modules, new_rank, new_conv_rank=None, dynamic_method=None, dynamic_param=None):
    """({name: LoRAWeights}, [ResizedModule]) for a whole LoRA."""
    if dynamic_method is not None and dynamic_method not in DYNAMIC_METHODS:
        raise ValueError(f"unknown dynamic method {dynamic_method!r}")
    new_conv_rank = new_rank if new_conv_rank is None else new_conv_rank
    out, reports = {}, []
    for name, module in modules.items():
        max_rank = new_conv_rank if module.is_conv else new_rank  # kohya: every conv, 1x1 too
        out[name], report = resize_module(name, module, max_rank, dynamic_method, dynamic_param)
        reports.append(report)
    return out, reports


def fro_summary(reports):
    """(mean, std) of the Frobenius norm retained, as kohya's verbose summary (NaN entries left out)."""
    values = [r.fro_retained for r in reports if not np.isnan(r.fro_retained)]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))
