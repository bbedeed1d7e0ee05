"""Shrink a LoRA's rank by SVD (kohya networks/resize_lora.py).

    python tools/resize_lora.py --model in.safetensors --save_to out.safetensors --new_rank 8 [--verbose]
    python tools/resize_lora.py --model in.safetensors --save_to out.safetensors --new_rank 32 \\
        --dynamic_method sv_fro --dynamic_param 0.9

Each module's delta is re-factored at the new rank (conv modules: --new_conv_rank), or at the rank a dynamic
method picks (capped at --new_rank). Modules already at or below the new rank are kept as they are.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import (UserError, add_device_option, add_pickle_option, make_parser,  # noqa: E402
                           mention_ignored, positive, run_cli, say, setup_logging)

SAVE_PRECISIONS = ("float", "fp16", "bf16")
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("--model", type=str, default=None, help="the LoRA to resize (.safetensors; .pt/.ckpt with "
                                                           "--allow_unsafe_pickle)")
    p.add_argument("--save_to", type=str, default=None, help="the file to write (.safetensors, .pt or .ckpt)")
    p.add_argument("--new_rank", type=int, default=4, help="rank of the output LoRA, the cap for dynamic "
                                                           "methods (default 4)")
    p.add_argument("--new_conv_rank", type=int, default=None,
                   help="rank of conv modules (kohya: every conv, 1x1 included); default --new_rank")
    p.add_argument("--save_precision", type=str, default=None, choices=SAVE_PRECISIONS,
                   help="dtype of the saved weights (default float)")
    p.add_argument("--dynamic_method", type=str, default=None, choices=DYNAMIC_METHODS,
                   help="pick each module's rank: sv_ratio (singular values above max/param), sv_fro (that share "
                        "of the Frobenius norm), sv_cumulative (that share of the sum of singular values)")
    p.add_argument("--dynamic_param", type=float, default=None,
                   help="the target of --dynamic_method (sv_ratio: >= 1; sv_fro, sv_cumulative: in (0, 1])")
    p.add_argument("--verbose", action="store_true",
                   help="print each module's retained sum of singular values, Frobenius norm and max(S) ratio")
    add_pickle_option(p)
    add_device_option(p)
    return p


def check_args(args):
    """Everything that can be wrong with the options, before any file is read."""
    from library.networks.lora_files import check_save_path

    if not args.model:
        raise UserError("--model is required: the LoRA file to resize")
    check_save_path(args.save_to)
    positive("--new_rank", args.new_rank)
    positive("--new_conv_rank", args.new_conv_rank)
    if args.dynamic_method and args.dynamic_param is None:
        raise UserError(f"--dynamic_method {args.dynamic_method} needs --dynamic_param")
    if args.dynamic_param is not None and not args.dynamic_method:
        raise UserError("--dynamic_param is only used with --dynamic_method")
    if args.dynamic_method == "sv_ratio" and args.dynamic_param < 1:
        raise UserError(f"--dynamic_param for sv_ratio is the ratio max(S) / S kept, >= 1; got {args.dynamic_param}")
    if args.dynamic_method in ("sv_fro", "sv_cumulative") and not 0 < args.dynamic_param <= 1:
        raise UserError(f"--dynamic_param for {args.dynamic_method} is a share in (0, 1]; got {args.dynamic_param}")


def resized_metadata(metadata, args, modules, old_dim):
    """kohya's updates: ss_training_comment says what was done; ss_network_dim / alpha are the new rank and
    alpha ("Dynamic" for dynamic resizing or ranks that differ); sshs_* are recomputed when saving."""
    from library.networks.lora_files import dims_and_alphas

    metadata = {k: v for k, v in (metadata or {}).items() if not k.startswith("sshs_")}
    comment = metadata.get("ss_training_comment", "")
    if args.dynamic_method:
        metadata["ss_training_comment"] = (f"Dynamic resize with {args.dynamic_method}: {args.dynamic_param} "
                                           f"from {old_dim}; {comment}")
        metadata["ss_network_dim"] = metadata["ss_network_alpha"] = "Dynamic"
    else:
        conv_desc = "" if args.new_conv_rank == args.new_rank else f" (conv: {args.new_conv_rank})"
        metadata["ss_training_comment"] = (f"dimension is resized from {old_dim} to {args.new_rank}{conv_desc}; "
                                           f"{comment}")
        linear = {name: m for name, m in modules.items() if not m.is_conv} or modules
        metadata["ss_network_dim"], metadata["ss_network_alpha"] = dims_and_alphas(linear)
    return metadata


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    mention_ignored(args)
    args.new_conv_rank = args.new_rank if args.new_conv_rank is None else args.new_conv_rank
    check_args(args)

    from library.formats.lora import save_lora
    from library.networks.lora_files import read_lora_modules
    from library.networks.lowrank import join_modules
    from library.networks.resize import fro_summary, resize_modules

    say(f"loading {args.model}")
    modules, metadata, _ = read_lora_modules(args.model, args.allow_unsafe_pickle)
    if args.dynamic_method:
        say(f"dynamically choosing ranks with {args.dynamic_method}: {args.dynamic_param}, at most {args.new_rank}")
    resized, reports = resize_modules(modules, args.new_rank, args.new_conv_rank, args.dynamic_method,
                                      args.dynamic_param)
    if args.verbose:
        print("\n".join(r.verbose_line(bool(args.dynamic_method)) for r in reports))
        mean, std = fro_summary(reports)
        print(f"Average Frobenius norm retention: {mean:.2%} | std: {std:0.3f}")
    old_dim = max(m.rank for m in modules.values())
    metadata = resized_metadata(metadata, args, resized, old_dim)
    say(f"saving {args.save_to}")
    save_lora(args.save_to, join_modules(resized), metadata, save_precision=args.save_precision)
    unchanged = sum(r.unchanged for r in reports)
    say(f"resized {len(reports) - unchanged} of {len(reports)} modules"
        + (f" ({unchanged} already at or below the new rank, kept)" if unchanged else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
