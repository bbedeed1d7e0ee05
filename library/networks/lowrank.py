"""LoRA weights as numpy: the delta a module adds, its SVD, kohya's rank choices and factor clamping.

A module's delta has the target weight's layout: Linear [out, in], Conv [out, in, kh, kw]; as a matrix a conv
delta is [out, in * kh * kw]. `lora_up` is [out, r] (conv: [out, r, 1, 1]) and `lora_down` [r, in] (conv:
[r, in, kh, kw]); the delta is alpha / r * up @ down.

SVDs of a factored delta go through QR of the factors (exact, and cheap: the SVD is of an r x r core, never of
the [out, in] matrix). Singular pairs get a canonical sign (the largest-magnitude entry of each left vector is
positive), so results do not depend on the LAPACK build, and neither does kohya's quantile clamp of the factors.
"""
import dataclasses

import numpy as np

from ..errors import UserError

MIN_SV = 1e-6  # kohya: a largest singular value at or below this is a zero delta (kept at rank 1)
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha")


def lora_delta(down, up, scale):
    """scale * up @ down with the target weight's layout (Linear [out,in]; Conv [out,in,k,k])."""
    down = np.asarray(down, dtype=np.float32)
    up = np.asarray(up, dtype=np.float32)
    up_2d = up.reshape(up.shape[0], up.shape[1])  # [out, r] (1x1 up conv squeezed)
    if down.ndim == 2:
        return (up_2d @ down) * scale
    # conv: W[o, i, kh, kw] = sum_r up[o, r] down[r, i, kh, kw] (kohya: conv2d(down^T, up)^T; 1x1 is the same)
    return np.einsum("or,rikl->oikl", up_2d, down) * scale


@dataclasses.dataclass
class LoRAWeights:
    """One module of a LoRA file."""
    down: np.ndarray
    up: np.ndarray
    alpha: float

    @property
    def rank(self):
        return int(self.down.shape[0])

    @property
    def scale(self):
        return self.alpha / self.rank

    @property
    def is_conv(self):
        return self.down.ndim == 4

    @property
    def is_conv3x3(self):
        """kohya's conv_dim modules: a kernel larger than 1x1."""
        return self.is_conv and tuple(self.down.shape[2:]) != (1, 1)

    @property
    def delta_shape(self):
        return (self.up.shape[0],) + tuple(self.down.shape[1:])

    def up_matrix(self, dtype=np.float64):
        return np.asarray(self.up, dtype=dtype).reshape(self.up.shape[0], self.rank)

    def down_matrix(self, dtype=np.float64):
        return np.asarray(self.down, dtype=dtype).reshape(self.rank, -1)

    def delta(self, multiplier=1.0):
        return lora_delta(self.down, self.up, self.scale * multiplier)


def split_modules(tensors, source="LoRA file"):
    """{module name: LoRAWeights} from kohya-keyed tensors (a missing alpha means alpha = rank, as kohya)."""
    grouped = {}
    for key, value in tensors.items():
        for part in PARTS:
            if key.endswith(part):
                grouped.setdefault(key[: -len(part)], {})[part] = value
                break
        else:
            raise UserError(f"{source}: {key} is not a LoRA weight (.lora_down.weight, .lora_up.weight, .alpha)")
    modules = {}
    for name, parts in grouped.items():
        if ".lora_down.weight" not in parts or ".lora_up.weight" not in parts:
            raise UserError(f"{source}: module {name} lacks its lora_down or lora_up weight")
        down = np.asarray(parts[".lora_down.weight"], dtype=np.float32)
        up = np.asarray(parts[".lora_up.weight"], dtype=np.float32)
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0] \
                or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
            raise UserError(f"{source}: module {name} has lora_down {list(down.shape)} and lora_up "
                            f"{list(up.shape)}, which do not make a LoRA (up [out, r(, 1, 1)], down [r, in(, k, k)])")
        alpha = parts.get(".alpha")
        alpha = float(np.asarray(alpha, dtype=np.float64).reshape(())) if alpha is not None else float(down.shape[0])
        modules[name] = LoRAWeights(down, up, alpha)
    return modules


def join_modules(modules):
    """{module name: LoRAWeights} -> kohya-keyed tensors (alpha as a 0-dim float32)."""
    tensors = {}
    for name, module in modules.items():
        tensors[name + ".lora_down.weight"] = np.asarray(module.down, dtype=np.float32)
        tensors[name + ".lora_up.weight"] = np.asarray(module.up, dtype=np.float32)
        tensors[name + ".alpha"] = np.array(module.alpha, dtype=np.float32)
    return tensors

# ----------------------------------------------------------------------------------------------- SVD


@dataclasses.dataclass
class Svd:
    """matrix = u @ diag(s) @ vh, s descending; `size` = min(out, in) of the full matrix."""
    u: np.ndarray
    s: np.ndarray
    vh: np.ndarray
    size: int

    def padded_s(self):
        """All min(out, in) singular values (the ones a factored SVD does not compute are zero)."""
        return np.concatenate([self.s, np.zeros(max(0, self.size - len(self.s)))])


def _canonical(u, s, vh):
    """Flip each singular pair so the largest-magnitude entry of its left vector is positive."""
    if u.shape[1] == 0:
        return u, s, vh
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs, s, vh * signs[:, None]


def matrix_svd(matrix):
    """Canonical-sign thin SVD of a dense matrix (extraction: the difference of two weights)."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    return Svd(*_canonical(u, s, vh), size=min(matrix.shape))


def factored_svd(up, down):
    """SVD of up @ down ([out, r] @ [r, in]) through QR of each factor: exact, r x r work."""
    qu, ru = np.linalg.qr(up)
    qd, rd = np.linalg.qr(down.T)
    u, s, vh = np.linalg.svd(ru @ rd.T)
    return Svd(*_canonical(qu @ u, s, vh @ qd.T), size=min(up.shape[0], down.shape[1]))


def low_rank_svd(pairs):
    """SVD of sum(c * up @ down) for [(c, up, down)] (several LoRAs' deltas for one module): the factors are
    concatenated, so the work stays at the summed rank."""
    up = np.concatenate([c * u for c, u, _ in pairs], axis=1)
    down = np.concatenate([d for _, _, d in pairs], axis=0)
    return factored_svd(up, down)

# ----------------------------------------------------------------------------------------------- ranks


def _clamped_index(index, count):
    return max(1, min(index, count - 1))


def dynamic_rank(s, method, param):
    """kohya's resize_lora rank for `method` (sv_ratio | sv_fro | sv_cumulative) from all singular values."""
    count = len(s)
    if method == "sv_ratio":
        index = _clamped_index(int(np.sum(s > s[0] / param)), count)
    elif method == "sv_cumulative":
        cumulative = np.cumsum(s) / np.sum(s)
        index = _clamped_index(int(np.searchsorted(cumulative, param)) + 1, count)
    elif method == "sv_fro":
        squared = s ** 2
        cumulative = np.cumsum(squared) / np.sum(squared)
        index = _clamped_index(int(np.searchsorted(cumulative, param ** 2)) + 1, count)
    else:
        raise ValueError(f"unknown dynamic method {method!r}")
    return index + 1


def choose_rank(s, max_rank, method=None, param=None):
    """kohya's rank_resize: the dynamic choice (or max_rank), capped at max_rank; 1 for a zero delta."""
    if s[0] <= MIN_SV:
        return 1
    rank = dynamic_rank(s, method, param) if method else max_rank
    return min(rank, max_rank)


def retained(s, rank):
    """(sum(S) kept, Frobenius norm kept, max(S) ratio) when keeping `rank` singular values, as kohya prints."""
    total = np.sum(np.abs(s))
    fro = np.sqrt(np.sum(s ** 2))
    sum_kept = float(np.sum(np.abs(s[:rank])) / total) if total > 0 else float("nan")
    fro_kept = float(np.sqrt(np.sum(s[:rank] ** 2)) / fro) if fro > 0 else float("nan")
    ratio = float(s[0] / s[rank - 1]) if s[rank - 1] > 0 else float("inf")
    return sum_kept, fro_kept, ratio

# ----------------------------------------------------------------------------------------------- factors


def clamp_factors(up, down, quantile):
    """kohya's extraction clamp: both factors to +-(the `quantile` quantile of all their entries).

    quantile >= 1 turns clamping off (kohya's 1.0 still clamps values below -max)."""
    if quantile >= 1:
        return up, down
    high = float(np.quantile(np.concatenate([up.ravel(), down.ravel()]), quantile))
    return np.clip(up, -high, high), np.clip(down, -high, high)


def truncated_factors(svd, rank, delta_shape, clamp_quantile=None):
    """(up, down) in LoRA layout keeping `rank` singular pairs: up = U S, down = Vh (kohya's split)."""
    rank = min(rank, len(svd.s))
    up = svd.u[:, :rank] * svd.s[:rank]
    down = svd.vh[:rank]
    if clamp_quantile is not None:
        up, down = clamp_factors(up, down, clamp_quantile)
    if len(delta_shape) == 4:
        up = up.reshape(delta_shape[0], rank, 1, 1)
        down = down.reshape((rank,) + tuple(delta_shape[1:]))
    return np.ascontiguousarray(up, dtype=np.float32), np.ascontiguousarray(down, dtype=np.float32)
