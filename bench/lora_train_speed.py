"""Kept for its old command line; the measurement is `python -m bench`'s lora_step case.

    python bench/lora_train_speed.py [--config tiny-sd15] [--steps 20] [--rank 4] [--batch 2]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.__main__ import main as bench_main  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny-sd15")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    return bench_main(["--cases", "lora_step_tiny_sd1", "--repeats", str(args.steps),
                       "--set", f"spec_name={args.config}", "--set", f"rank={args.rank}",
                       "--set", f"batch={args.batch}"])


if __name__ == "__main__":
    sys.exit(main())
