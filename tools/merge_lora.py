"""Merge LoRAs into a checkpoint, or into one LoRA (kohya networks/merge_lora.py, sdxl_merge_lora.py).

    # into a model: a single file in the model's own layout (SD1 / SD2 / SDXL, detected)
    python tools/merge_lora.py --sd_model model.safetensors --models a.safetensors b.safetensors \\
        --ratios 0.8 0.5 --save_to merged.safetensors
    # into one LoRA: kohya's factor sum (same ranks), --concat (exact, ranks add up), or SVD (--new_rank)
    python tools/merge_lora.py --models a.safetensors b.safetensors --ratios 1 1 --concat --save_to ab.safetensors
    python tools/merge_lora.py --models a.safetensors b.safetensors --ratios 1 1 --new_rank 16 --save_to ab.safetensors

Every weight W a LoRA module names becomes W + ratio * alpha / rank * up @ down, computed in --precision.
LyCORIS files are refused (they come with LyCORIS support, issue 17).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import (PRECISIONS, UserError, add_device_option, add_pickle_option, make_parser,  # noqa: E402
                           mention_ignored, positive, run_cli, say, setup_logging)

SVD_CLAMP_QUANTILE = 0.99


def add_common_arguments(p):
    """The options merge_lora.py and svd_merge_lora.py share (kohya's names)."""
    p.add_argument("--models", type=str, nargs="*", default=None,
                   help="LoRA files to merge (.safetensors; .pt/.ckpt with --allow_unsafe_pickle)")
    p.add_argument("--ratios", type=float, nargs="*", default=None, help="one ratio (strength) per LoRA")
    p.add_argument("--save_to", type=str, default=None, help="the file to write")
    p.add_argument("--precision", type=str, default="float", choices=PRECISIONS,
                   help="precision of the merge arithmetic (default float; fp16/bf16 round the inputs and the "
                        "merged weights as kohya's computation in that dtype does)")
    p.add_argument("--save_precision", type=str, default=None, choices=PRECISIONS,
                   help="dtype of the saved weights (default: --precision)")
    p.add_argument("--no_metadata", action="store_true",
                   help="do not write SAI model-spec metadata (a LoRA keeps kohya's minimum ss_* keys)")
    p.add_argument("--lbws", type=str, nargs="*", default=None,
                   help="kohya's per-block ratios: not available here yet (refused with a message)")
    add_pickle_option(p)
    add_device_option(p)


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("--sd_model", type=str, default=None,
                   help="the checkpoint to merge into (.safetensors, a diffusers folder, or .ckpt with "
                        "--allow_unsafe_pickle); without it the LoRAs merge into one LoRA")
    add_common_arguments(p)
    p.add_argument("--v2", action="store_true", default=None,
                   help="the model is SD 2.x (detected from the keys; a contradicting flag is an error)")
    p.add_argument("--sdxl", action="store_true", default=None,
                   help="the model is SDXL (detected from the keys; kohya's sdxl_merge_lora.py)")
    p.add_argument("--concat", action="store_true",
                   help="LoRA output: put the factors side by side (rank = the sum of ranks): exactly the sum of the "
                        "deltas")
    p.add_argument("--shuffle", action="store_true", help="LoRA output: shuffle the rank channels (same delta)")
    p.add_argument("--new_rank", type=int, default=None,
                   help="LoRA output by SVD (svd_merge_lora.py): the summed deltas truncated to this rank")
    p.add_argument("--new_conv_rank", type=int, default=None, help="SVD rank of 3x3 conv modules (default "
                                                                   "--new_rank)")
    p.add_argument("--clamp_quantile", type=float, default=SVD_CLAMP_QUANTILE,
                   help="SVD merge: clamp the factors at this quantile of their entries, as kohya (default 0.99; "
                        "1 = no clamping)")
    return p


def check_common(args):
    if args.lbws:
        raise UserError("--lbws (per-block ratios) is not available yet: merge with one ratio per file (--ratios)")
    if not args.models:
        raise UserError("--models is required: the LoRA files to merge")
    if args.ratios is None or len(args.ratios) != len(args.models):
        count = 0 if args.ratios is None else len(args.ratios)
        raise UserError(f"--ratios needs one value per file in --models: {len(args.models)} model(s) but {count} "
                        "ratio(s)")
    if not args.save_to:
        raise UserError("--save_to is required: the file to write")
    for path in args.models:
        if not os.path.isfile(path):
            raise UserError(f"--models: LoRA file {path} does not exist")
    if args.clamp_quantile is not None and not 0 < args.clamp_quantile <= 1:
        raise UserError(f"--clamp_quantile must be in (0, 1], got {args.clamp_quantile}")


def check_args(args):
    """Everything that can be wrong with the options, before any file is read."""
    from library.checkpoints.components import check_checkpoint_path
    from library.networks.lora_files import check_save_path

    check_common(args)
    positive("--new_rank", args.new_rank)
    positive("--new_conv_rank", args.new_conv_rank)
    if args.new_conv_rank is not None and args.new_rank is None:
        raise UserError("--new_conv_rank is the SVD merge's conv rank: give --new_rank too")
    if args.sd_model is not None:
        for option in ("concat", "shuffle", "new_rank"):
            if getattr(args, option):
                raise UserError(f"--{option} is for merging LoRAs into one LoRA; with --sd_model they merge into the "
                                "model")
        if not os.path.exists(args.sd_model):
            raise UserError(f"--sd_model {args.sd_model} does not exist")
        check_checkpoint_path(args.save_to)
    else:
        if args.concat and args.new_rank is not None:
            raise UserError("--concat and --new_rank are two ways to merge: choose one")
        if args.v2 or args.sdxl:
            say("--v2 / --sdxl describe a --sd_model checkpoint: ignored when LoRAs merge into one LoRA")
        check_save_path(args.save_to)


def read_loras(args):
    """[(modules, ratio, path)], their metadata and the family they share (read before any model)."""
    from library.networks.lora_files import check_same_family, read_lora_modules

    loras, metadatas, families = [], [], []
    for path, ratio in zip(args.models, args.ratios):
        say(f"loading {path}")
        modules, metadata, family = read_lora_modules(path, args.allow_unsafe_pickle)
        loras.append((modules, ratio, path))
        metadatas.append(metadata)
        families.append((path, family))
    return loras, metadatas, check_same_family(families)


def checkpoint_metadata(args, spec):
    """kohya: SAI model-spec of the merged checkpoint (title = the output's name, merged_from = the sources)."""
    from library.checkpoints.spec_metadata import modelspec_metadata
    from library.networks.lora_files import title_of
    from library.training.model_spec import implementation_version

    if args.no_metadata:
        return {}
    metadata = modelspec_metadata(spec)
    metadata.update({
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": os.path.splitext(os.path.basename(args.save_to))[0],
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.merged_from": ", ".join(title_of(p) for p in [args.sd_model] + args.models),
        "modelspec.implementation_version": implementation_version(),
    })
    return metadata


def merge_into_checkpoint(args, loras):
    from library.checkpoints.components import read_model_components, write_checkpoint
    from library.networks.family import check_family
    from library.networks.merging import merge_into_components
    from library.networks.naming import lora_weight_names

    say(f"loading {args.sd_model}")
    model = read_model_components(args.sd_model, v2=args.v2, sdxl=args.sdxl, allow_pickle=args.allow_unsafe_pickle)
    say(f"{args.sd_model}: {model.spec.family} ({model.spec.name})")
    table = lora_weight_names(model.components, model.spec)
    for modules, ratio, path in loras:
        downs = {name + ".lora_down.weight": m.down for name, m in modules.items()}
        check_family(downs, None, model.spec.family, f"LoRA file {path}")
        count = merge_into_components(model.components, table, modules, ratio, args.precision, f"LoRA file {path}")
        say(f"merged {count} modules of {path} at ratio {ratio}")
    save_dtype = args.save_precision or args.precision
    say(f"saving {args.save_to}")
    write_checkpoint(args.save_to, model.single_file_tensors(), model.spec, checkpoint_metadata(args, model.spec),
                     save_dtype)


def merge_into_lora(args, loras, metadatas, family, svd):
    """kohya's merge (sum of factors), --concat, or the SVD merge; written with kohya's minimum metadata."""
    import numpy as np

    from library.formats.lora import save_lora
    from library.networks import merging
    from library.networks.lora_files import (dims_and_alphas, lora_spec_metadata, minimum_metadata, title_of)
    from library.networks.lowrank import join_modules

    if svd:
        new_conv_rank = args.new_rank if args.new_conv_rank is None else args.new_conv_rank
        say(f"SVD merge: rank {args.new_rank}, conv rank {new_conv_rank}")
        merged = merging.merge_svd(loras, args.new_rank, new_conv_rank, args.precision, args.clamp_quantile)
        metadata = minimum_metadata(metadatas, str(args.new_rank), str(args.new_rank),
                                    {"conv_dim": new_conv_rank, "conv_alpha": new_conv_rank})
    else:
        merge = merging.merge_concat if args.concat else merging.merge_kohya
        merged = merge(loras, args.precision)
        if args.shuffle:
            merged = merging.shuffle_ranks(merged, np.random.default_rng())
        metadata = minimum_metadata(metadatas, *dims_and_alphas(merged))
    if not args.no_metadata:
        metadata.update(lora_spec_metadata(family, args.save_to, metadatas,
                                           merged_from=", ".join(title_of(p) for p in args.models)))
    say(f"saving {args.save_to} ({len(merged)} modules)")
    save_lora(args.save_to, join_modules(merged), metadata, save_precision=args.save_precision or args.precision)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    mention_ignored(args)
    check_args(args)
    loras, metadatas, family = read_loras(args)
    if args.sd_model is not None:
        merge_into_checkpoint(args, loras)
    else:
        merge_into_lora(args, loras, metadatas, family, svd=args.new_rank is not None)
    return 0


if __name__ == "__main__":
    run_cli(main)
