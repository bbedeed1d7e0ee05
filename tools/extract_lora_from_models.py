"""Extract a LoRA from the difference of a fine-tuned model and its original (kohya
networks/extract_lora_from_models.py).

    python tools/extract_lora_from_models.py --model_org base.safetensors --model_tuned tuned.safetensors \\
        --save_to extracted.safetensors --dim 16 [--conv_dim 8]

The modules are the ones kohya's LoRA trains (with --conv_dim also the ResNet convolutions); each difference
is factored by SVD at --dim (--conv_dim) with alpha = rank, and the factors are clamped at --clamp_quantile.
The text encoders are left out when none of their weights differs by more than --min_diff. SD1 / SD2 / SDXL
are detected from the files (--v2 / --sdxl must agree with them).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import (PRECISIONS, UserError, add_device_option, add_pickle_option, make_parser,  # noqa: E402
                           mention_ignored, positive, run_cli, say, setup_logging)


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("--model_org", type=str, required=True, help="the original model (.safetensors, a diffusers "
                                                                "folder, or .ckpt with --allow_unsafe_pickle)")
    p.add_argument("--model_tuned", type=str, required=True,
                   help="the fine-tuned model; the LoRA is the change from --model_org to it")
    p.add_argument("--save_to", type=str, required=True, help="the LoRA file to write (.safetensors, .pt, .ckpt)")
    p.add_argument("--dim", type=int, default=4, help="rank of the LoRA (default 4)")
    p.add_argument("--conv_dim", type=int, default=None,
                   help="rank for 3x3 convolutions; also extracts the ResNet blocks (default: none)")
    p.add_argument("--clamp_quantile", type=float, default=0.99,
                   help="clamp the factors at this quantile of their entries (default 0.99; 1 = no clamping)")
    p.add_argument("--min_diff", type=float, default=0.01,
                   help="the text encoders are extracted only when a weight differs by more than this (default "
                        "0.01)")
    p.add_argument("--v2", action="store_true", default=None, help="the models are SD 2.x (detected; must agree)")
    p.add_argument("--sdxl", action="store_true", default=None, help="the models are SDXL (detected; must agree)")
    p.add_argument("--v_parameterization", action="store_true", default=None,
                   help="record the LoRA as v-prediction (default: what the model file says)")
    p.add_argument("--load_precision", type=str, default=None, choices=PRECISIONS,
                   help="round the weights to this precision before taking differences (default: as stored)")
    p.add_argument("--save_precision", type=str, default=None, choices=PRECISIONS,
                   help="dtype of the saved LoRA (default float)")
    p.add_argument("--no_metadata", action="store_true",
                   help="do not write SAI model-spec metadata (kohya's minimum ss_* keys are kept)")
    p.add_argument("--load_original_model_to", type=str, default=None, help="accepted for kohya compatibility "
                                                                            "and ignored (CPU)")
    p.add_argument("--load_tuned_model_to", type=str, default=None, help="accepted for kohya compatibility and "
                                                                         "ignored (CPU)")
    add_pickle_option(p)
    add_device_option(p)
    return p


def check_args(args):
    from library.networks.lora_files import check_save_path

    if args.v2 and args.sdxl:
        raise UserError("--v2 and --sdxl cannot both be given")
    positive("--dim", args.dim)
    positive("--conv_dim", args.conv_dim)
    if not 0 < args.clamp_quantile <= 1:
        raise UserError(f"--clamp_quantile must be in (0, 1], got {args.clamp_quantile}")
    if args.min_diff < 0:
        raise UserError(f"--min_diff must be >= 0, got {args.min_diff}")
    check_save_path(args.save_to)
    for option in ("model_org", "model_tuned"):
        if not os.path.exists(getattr(args, option)):
            raise UserError(f"--{option} {getattr(args, option)} does not exist")


def extraction_metadata(args, spec):
    """kohya: the minimum ss_* keys with dim / alpha = --dim (conv_dim in ss_network_args) + SAI model-spec."""
    from library.formats.lora import base_model_version, lora_metadata
    from library.networks.lora_files import NETWORK_MODULE, lora_spec_metadata

    v_parameterization = args.v_parameterization
    if v_parameterization is None:
        v_parameterization = spec.prediction_type == "v_prediction"
    network_args = {} if args.conv_dim is None else {"conv_dim": str(args.conv_dim),
                                                     "conv_alpha": str(float(args.conv_dim))}
    metadata = lora_metadata({"v2": spec.family == "sd2",
                              "base_model_version": base_model_version(spec.family, v_parameterization),
                              "network_module": NETWORK_MODULE, "network_dim": str(args.dim),
                              "network_alpha": str(float(args.dim)), "network_args": json.dumps(network_args)})
    if not args.no_metadata:
        metadata.update(lora_spec_metadata(spec.family, args.save_to, v_parameterization=v_parameterization))
    return metadata


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    mention_ignored(args)
    check_args(args)

    from library.checkpoints.components import read_model_components
    from library.checkpoints.detect import FAMILY_NAMES
    from library.formats.lora import save_lora
    from library.networks.extract import extract_modules, lora_targets, weight_differences
    from library.networks.lowrank import join_modules

    models = []
    for option in ("model_org", "model_tuned"):
        say(f"loading {getattr(args, option)}")
        models.append(read_model_components(getattr(args, option), v2=args.v2, sdxl=args.sdxl,
                                            allow_pickle=args.allow_unsafe_pickle))
    original, tuned = models
    if original.spec.family != tuned.spec.family:  # (shapes are compared weight by weight below)
        raise UserError(f"--model_org is {FAMILY_NAMES[original.spec.family]} but --model_tuned is "
                        f"{FAMILY_NAMES[tuned.spec.family]}: a LoRA comes from two models of one architecture")
    targets = lora_targets(original.spec, with_conv=args.conv_dim is not None)
    differences, _ = weight_differences(original.components, tuned.components, targets, args.min_diff,
                                        args.load_precision, (args.model_org, args.model_tuned))
    original.components = tuned.components = original.original = tuned.original = None  # free the models
    say(f"factoring {len(differences)} weight differences by SVD")
    modules = extract_modules(differences, targets, args.dim, args.conv_dim, args.clamp_quantile)
    say(f"saving {args.save_to}")
    save_lora(args.save_to, join_modules(modules), extraction_metadata(args, original.spec),
              save_precision=args.save_precision)
    return 0


if __name__ == "__main__":
    run_cli(main)
