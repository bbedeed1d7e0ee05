"""What the scripts in tools/ share: the import path, the parser, the log, kohya options that do nothing here."""
import argparse
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from library.config.cli_parser import CliParser  # noqa: E402
from library.errors import UserError, run_cli  # noqa: E402,F401 - the tools import them from here

PRECISIONS = ("float", "fp16", "bf16")


def make_parser(description, epilog=None):
    return CliParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_pickle_option(parser):
    parser.add_argument("--allow_unsafe_pickle", action="store_true",
                        help="read .pt/.ckpt/.bin pickle files (they can run code when loaded: only files you trust)")


def add_device_option(parser):
    parser.add_argument("--device", type=str, default=None,
                        help="accepted for kohya compatibility and ignored: the tools compute with numpy on the CPU")


def positive(option, value):
    if value is not None and value <= 0:
        raise UserError(f"{option} must be a positive number, got {value}")


def setup_logging(verbose=False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def say(message):
    logging.getLogger("tools").info(message)


def mention_ignored(args):
    """kohya's device options do nothing here; say so when they are given (nothing is ignored silently)."""
    for option in ("device", "load_original_model_to", "load_tuned_model_to"):
        if getattr(args, option, None):
            say(f"--{option} {getattr(args, option)}: ignored (the tools compute with numpy on the CPU)")
