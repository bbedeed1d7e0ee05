"""Kept for its old command line; the measurement is `python -m bench`'s unet_fwd_bwd case.

    python bench/unet_fwd_bwd.py [--configs tiny-sd15 tiny-sdxl sd15] [--repeats 5] [--latent N] [--checkpointing]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.__main__ import main as bench_main  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny-sd15", "tiny-sdxl", "sd15"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent", type=int, default=0, help="latent side (0: spec's for tiny, 64 for full)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both")
    args = parser.parse_args()
    code = 0
    for config in args.configs:
        latent = args.latent or (None if config.startswith("tiny") else 64)
        code |= bench_main(["--cases", "unet_fwd_bwd_sd15_64", "--repeats", str(args.repeats),
                            "--set", f"spec_name={config}", "--set", f"latent={latent}",
                            "--set", f"checkpointing={args.checkpointing}"])
    return code


if __name__ == "__main__":
    sys.exit(main())
