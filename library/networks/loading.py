"""LoRA files into a loaded model for generation (kohya gen_img's --network_weights / --network_mul /
--network_merge), from kohya, PEFT or diffusers-style files."""
from ..formats.lora import read_lora_file
from . import create_network_from_weights


def load_lora(bundle, path, multiplier=1.0, merge=False, allow_pickle=False):
    """Build the file's modules (its own ranks/alphas) and either apply them as adapters (the multiplier can be
    changed later with `network.set_multiplier`) or merge them into the weights once (merge=True).

    Returns (network, metadata). Raises UserError for files of another model family or layout problems."""
    tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
    network = create_network_from_weights(bundle, tensors, multiplier=multiplier)
    network.load_state_dict(tensors, metadata, source=f"LoRA file {path}")
    if merge:
        network.merge_into_base(multiplier)
    else:
        network.apply()
        for module in network.modules:
            module.set_train(False)  # no dropout at inference
    return network, metadata


def load_loras(bundle, paths, multipliers=None, merge=False, allow_pickle=False):
    """Several files (kohya: one --network_mul per file, default 1.0). Returns [(network, metadata)]."""
    multipliers = list(multipliers or [])
    multipliers += [1.0] * (len(paths) - len(multipliers))
    return [load_lora(bundle, path, m, merge=merge, allow_pickle=allow_pickle)
            for path, m in zip(paths, multipliers)]
