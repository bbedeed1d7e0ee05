"""LoRA networks at generation time (kohya gen_img `--network_module/--network_weights/--network_mul`).

Each file becomes a network built from its own ranks and alphas. Without --network_merge the modules are
applied as adapters (their multipliers can change per prompt with `--am`); with it their deltas are added
to the base weights once, so sampling costs nothing extra.
"""
from dataclasses import dataclass

from ..errors import UserError
from ..formats.lora import read_lora_file
from ..networks import NETWORK_MODULE_NAMES, create_network_from_weights, parse_network_args


@dataclass
class LoadedNetwork:
    path: str
    network: object
    multiplier: float
    merged: bool


def _per_network(values, count, option, default):
    if not values:
        return [default] * count
    if len(values) == 1 and count > 1:
        return list(values) * count
    if len(values) != count:
        raise UserError(f"{option}: got {len(values)} value(s) for {count} --network_weights file(s)")
    return list(values)


def check_networks(weights, modules=None, multipliers=None, network_args=None):
    """What can be checked without the model (gen_img runs it before loading): counts, module names,
    --network_args keys and values. Returns (modules, multipliers, args) per file."""
    weights = list(weights or [])
    modules = _per_network(modules, len(weights), "--network_module", "networks.lora")
    multipliers = [float(m) for m in _per_network(multipliers, len(weights), "--network_mul", 1.0)]
    args = _per_network(network_args, len(weights), "--network_args", None)
    for path, module, arg in zip(weights, modules, args):
        if module not in NETWORK_MODULE_NAMES:
            raise UserError(f"--network_module {module!r} is not supported; expected one of: "
                            f"{', '.join(NETWORK_MODULE_NAMES)} (other network modules and LyCORIS: issue 17)")
        parse_network_args(arg)
    return modules, multipliers, args


def load_networks(bundle, weights, modules=None, multipliers=None, merge=False, network_args=None,
                  allow_pickle=False):
    """Load every LoRA file into the bundle; returns [LoadedNetwork]."""
    weights = list(weights or [])
    modules, multipliers, args = check_networks(weights, modules, multipliers, network_args)
    loaded = []
    for path, module, multiplier, arg in zip(weights, modules, multipliers, args):
        tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
        network = create_network_from_weights(bundle, tensors, multiplier=multiplier, network_args=arg)
        _, unexpected = network.load_state_dict(tensors, metadata, source=f"LoRA file {path}")
        if unexpected:  # the network was built from this file, so these name no layer of the model
            raise UserError(f"LoRA file {path}: {len(unexpected)} module(s) match no layer of this "
                            f"{bundle.spec.family} model or lack lora_down/lora_up weights, e.g. "
                            f"{', '.join(unexpected[:3])} (a LoRA for another model, or a damaged file)")
        if merge:
            network.merge_into_base(multiplier)
        else:
            network.apply()
        loaded.append(LoadedNetwork(path=str(path), network=network, multiplier=multiplier, merged=merge))
    # No cache to clear: compiled text conditioners and UNet steps are keyed on the models' adapters
    # (models.bundle.graph_structure_key), so the next call compiles a graph that includes the LoRA.
    return loaded


def set_multipliers(networks, multipliers):
    """Per-prompt `--am m1,m2,...` (applied networks only); None restores the --network_mul values."""
    if not networks:
        if multipliers:
            raise UserError("--am: no --network_weights were loaded")
        return
    if multipliers and any(n.merged for n in networks):
        raise UserError("--am cannot change a network merged with --network_merge")
    values = [n.multiplier for n in networks] if not multipliers else _per_network(
        multipliers, len(networks), "--am", 1.0)
    for entry, value in zip(networks, values):
        if not entry.merged:
            entry.network.set_multiplier(float(value))
