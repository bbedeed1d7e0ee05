"""Kept for its old command line; the measurement is `python -m bench`'s gen case.

    python bench/gen_tiny.py [--steps 20] [--sampler euler] [--size 64] [--repeats 3] [--models tiny-sd15 tiny-sdxl]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.__main__ import main as bench_main  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler", choices=["ddim", "euler"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["tiny-sd15", "tiny-sdxl"])
    args = parser.parse_args()
    code = 0
    for model in args.models:
        code |= bench_main(["--cases", "gen_tiny_sd1_20steps", "--repeats", str(args.repeats),
                            "--set", f"spec_name={model}", "--set", f"steps={args.steps}",
                            "--set", f"sampler={args.sampler}", "--set", f"size={args.size}"])
    return code


if __name__ == "__main__":
    sys.exit(main())
