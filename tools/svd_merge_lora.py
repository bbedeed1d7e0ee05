"""Merge LoRAs into one LoRA by SVD (kohya networks/svd_merge_lora.py).

    python tools/svd_merge_lora.py --models a.safetensors b.safetensors --ratios 0.7 0.3 --new_rank 16 \\
        --save_to ab.safetensors

Per module the deltas are summed (ratio * alpha / rank * up @ down), and the sum is truncated to --new_rank
(3x3 convs: --new_conv_rank): up = U S, down = Vh, alpha = rank, factors clamped at the 0.99 quantile as
kohya. The same merge is `merge_lora.py --new_rank`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import make_parser, mention_ignored, positive, run_cli, setup_logging  # noqa: E402
from tools.merge_lora import (SVD_CLAMP_QUANTILE, add_common_arguments, check_common,  # noqa: E402
                              merge_into_lora, read_loras)


def build_parser():
    p = make_parser(__doc__)
    add_common_arguments(p)
    p.add_argument("--new_rank", type=int, default=4, help="rank of the output LoRA (default 4)")
    p.add_argument("--new_conv_rank", type=int, default=None, help="rank of 3x3 conv modules (default --new_rank)")
    p.add_argument("--clamp_quantile", type=float, default=SVD_CLAMP_QUANTILE,
                   help="clamp the factors at this quantile of their entries, as kohya (default 0.99; 1 = no "
                        "clamping)")
    return p


def check_args(args):
    from library.networks.lora_files import check_save_path

    check_common(args)
    positive("--new_rank", args.new_rank)
    positive("--new_conv_rank", args.new_conv_rank)
    check_save_path(args.save_to)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    mention_ignored(args)
    check_args(args)
    loras, metadatas, family = read_loras(args)
    merge_into_lora(args, loras, metadatas, family, svd=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
