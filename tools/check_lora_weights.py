"""Check a LoRA's weights: per-tensor statistics (kohya networks/check_lora_weights.py), then per module the
norm of the change it makes, with untrained (all-zero) modules flagged.

    python tools/check_lora_weights.py lora.safetensors [--show_all_keys]

Each LoRA tensor prints as kohya's `key,shape,mean(|w|),min(|w|)`; each module as `module,rank,alpha,norm`
where norm = ||alpha / rank * up @ down|| (Frobenius), marked ZERO when the module changes nothing (a lora_up
still at its zero initialisation, for example).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import UserError, add_pickle_option, make_parser, run_cli  # noqa: E402

LORA_MARKERS = ("lora_up", "lora_down", "lora_A", "lora_B", "oft_")


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("file", type=str, help="the LoRA file (.safetensors; .pt/.ckpt with --allow_unsafe_pickle)")
    p.add_argument("-s", "--show_all_keys", action="store_true", help="also show the keys that are not LoRA "
                                                                      "weights (alphas, ...)")
    add_pickle_option(p)
    return p


def tensor_lines(tensors, show_all_keys):
    import numpy as np

    names = [k for k in tensors if any(marker in k for marker in LORA_MARKERS)]
    lines = [f"number of LoRA modules: {len(names)}"]
    if show_all_keys:
        names += [k for k in tensors if k not in names]
        lines.append(f"number of all modules: {len(names)}")
    for name in names:
        value = np.abs(np.asarray(tensors[name], dtype=np.float32))
        shape = str(tuple(value.shape)).replace(", ", "-")
        mean = float(value.mean()) if value.size else float("nan")
        low = float(value.min()) if value.size else float("nan")
        lines.append(f"{name},{shape},{mean},{low}")
    return lines


def module_norms(tensors, metadata, path):
    """[(module name, rank, alpha, Frobenius norm of the delta)] per LoRA module (kohya, PEFT or diffusers key
    names). Raises UserError for files that are not plain LoRA (LyCORIS, ...)."""
    import numpy as np

    from library.formats.lora import normalize_lora_keys
    from library.networks.lowrank import split_modules

    modules = split_modules(normalize_lora_keys(tensors, metadata, source=path), source=path)
    return [(name, m.rank, m.alpha, float(np.linalg.norm(m.delta()))) for name, m in modules.items()]


def main(argv=None):
    args = build_parser().parse_args(argv)

    from library.formats.tensor_files import read_tensor_file

    tensors, metadata = read_tensor_file(args.file, args.allow_unsafe_pickle)
    print("\n".join(tensor_lines(tensors, args.show_all_keys)))
    try:
        norms = module_norms(tensors, metadata, args.file)
    except UserError as e:
        print(f"no module norms: {e}")
        return 0
    if norms:
        print(f"module,rank,alpha,norm of alpha/rank*up@down ({len(norms)} modules)")
        for name, rank, alpha, norm in norms:
            print(f"{name},{rank},{alpha:g},{norm:.6g}" + (",ZERO" if norm == 0 else ""))
        zero = [name for name, _, _, norm in norms if norm == 0]
        print(f"{len(zero)} of {len(norms)} modules change nothing (all-zero lora_up or lora_down)" if zero
              else f"all {len(norms)} modules change their layer")
    return 0


if __name__ == "__main__":
    run_cli(main)
