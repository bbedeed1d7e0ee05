"""LoRA networks injected into the models' Linear / Conv2d cells (kohya `networks.lora` compatible).

Entry points:
    create_network(bundle, multiplier, network_dim, network_alpha, network_dropout, network_args, ...)
    create_network_from_weights(bundle, tensors, multiplier, ...)   # dims/alphas from a file (--dim_from_weights)

The MindSpore parts are imported on first use, so the numpy-only modules (names, low-rank math, file merges)
load without MindSpore.
"""
import importlib

from .network_args import parse_network_args

_LAZY = {"LoRAModule": ".lora", "LoRANetwork": ".network", "dims_from_weights": ".network", "lora_delta": ".lowrank"}

# What users type for --network_module (kohya's module path) and what we accept as the same thing.
NETWORK_MODULE_NAMES = ("networks.lora", "lora", "library.networks")


def _parts(bundle):
    return bundle.unet, list(bundle.text_encoders), bundle.spec.family, bundle.spec.unet


def create_network(bundle, multiplier=1.0, network_dim=None, network_alpha=None, network_dropout=None,
                   network_args=None, train_unet=True, train_text_encoder=True, seed=None):
    """kohya's create_network: dim None -> 4, alpha None -> 1.0, `dropout` from --network_dropout."""
    from .network import LoRANetwork

    args = parse_network_args(network_args)
    if network_dropout is not None and args.get("dropout") is None:
        args["dropout"] = network_dropout
    unet, text_encoders, family, unet_config = _parts(bundle)
    return LoRANetwork(unet, text_encoders, family, unet_config, multiplier=multiplier,
                       network_dim=network_dim, network_alpha=network_alpha, train_unet=train_unet,
                       train_text_encoder=train_text_encoder, seed=seed, **args)


def create_network_from_weights(bundle, tensors, multiplier=1.0, network_args=None, train_unet=True,
                                train_text_encoder=True, seed=None):
    """A network whose modules, ranks and alphas are those in `tensors` (kohya keys)."""
    from .network import LoRANetwork, dims_from_weights

    args = parse_network_args(network_args)
    args.pop("conv_dim", None)
    args.pop("conv_alpha", None)
    modules_dim, modules_alpha = dims_from_weights(tensors)
    unet, text_encoders, family, unet_config = _parts(bundle)
    return LoRANetwork(unet, text_encoders, family, unet_config, multiplier=multiplier, modules_dim=modules_dim,
                       modules_alpha=modules_alpha, train_unet=train_unet, train_text_encoder=train_text_encoder,
                       seed=seed, **args)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["LoRAModule", "LoRANetwork", "lora_delta", "dims_from_weights", "parse_network_args", "create_network",
           "create_network_from_weights", "NETWORK_MODULE_NAMES"]
