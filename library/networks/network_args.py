"""`--network_args key=value ...` for networks.lora (kohya names and defaults)."""
from ..errors import UserError

_FLOAT_KEYS = ("conv_alpha", "dropout", "rank_dropout", "module_dropout", "loraplus_lr_ratio",
               "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_INT_KEYS = ("conv_dim",)
# kohya options this implementation does not have (block-wise dims / learning rates).
_UNSUPPORTED = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")


def _pairs(items):
    """(key, value text) pairs from ['conv_dim=4', ...], a dict, or one 'k=v;k2=v2' string."""
    if items is None:
        return []
    if isinstance(items, dict):
        return list(items.items())
    if isinstance(items, str):
        items = items.split(";")
    pairs = []
    for item in items:
        for piece in str(item).split(";"):
            piece = piece.strip()
            if not piece:
                continue
            if "=" not in piece:
                raise UserError(f"--network_args: '{piece}' is not key=value (e.g. conv_dim=4)")
            key, value = piece.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def network_args_as_written(items):
    """{key: value as the user wrote it}: what kohya stores in ss_network_args (no typing, no defaults)."""
    return {key: value if isinstance(value, str) else str(value) for key, value in _pairs(items)}


def parse_network_args(items):
    """['conv_dim=4', 'conv_alpha=1'] (or a dict, or one 'k=v;k2=v2' string) -> typed dict."""
    pairs = _pairs(items)
    parsed = {}
    for key, value in pairs:
        if key in _UNSUPPORTED:
            raise UserError(f"--network_args {key}: block-wise LoRA options are not supported (issue 17)")
        if key not in _FLOAT_KEYS + _INT_KEYS:
            raise UserError(f"--network_args: unknown key '{key}' (known: {', '.join(_INT_KEYS + _FLOAT_KEYS)})")
        if value is None or str(value).lower() == "none":
            parsed[key] = None
            continue
        try:
            parsed[key] = int(value) if key in _INT_KEYS else float(value)
        except (TypeError, ValueError):
            kind = "an integer" if key in _INT_KEYS else "a number"
            raise UserError(f"--network_args {key}={value}: expected {kind}") from None
    if parsed.get("conv_dim") is not None and parsed.get("conv_alpha") is None:
        parsed["conv_alpha"] = 1.0  # kohya's default when conv_dim is given
    return parsed
