"""Kept for its old command line; the measurement is `python -m bench`'s ti_step case.

    python bench/ti_step.py [--repeats 20] [--spec tiny-sd15]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.__main__ import main as bench_main  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--spec", default="tiny-sd15")
    args = parser.parse_args()
    return bench_main(["--cases", "ti_step_tiny_sd1", "--repeats", str(args.repeats),
                       "--set", f"spec_name={args.spec}"])


if __name__ == "__main__":
    sys.exit(main())
