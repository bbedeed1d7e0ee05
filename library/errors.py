"""User-facing errors: one clear message, exit code 2, no traceback unless --verbose."""
import os
import sys
import traceback


class UserError(Exception):
    """A problem the user can fix (bad file, key, option). The message must say what and where."""


EXIT_USER_ERROR = 2


def _wants_traceback(argv):
    return "--verbose" in argv or os.environ.get("SDMS_VERBOSE") == "1"


def run_cli(main, argv=None):
    """Run `main(argv)`; turn UserError (and Ctrl-C) into a message and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = main(argv)
    except UserError as e:
        if _wants_traceback(argv):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
