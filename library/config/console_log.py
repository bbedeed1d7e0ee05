"""kohya's console logging options (--console_log_level, --console_log_file, --console_log_simple) for the
three scripts, and the logging set-up they describe."""
import logging

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMAT = "%(levelname)s %(message)s"


def add_logging_arguments(parser):
    g = parser.add_argument_group("console log")
    g.add_argument("--console_log_level", type=str, default=None, choices=LEVELS,
                   help="level of the log lines (default INFO)")
    g.add_argument("--console_log_file", type=str, default=None, help="write the log to this file instead of stderr")
    g.add_argument("--console_log_simple", action="store_true",
                   help="plain log lines (they always are here: kohya's rich formatting is not used)")
    return parser


def setup_logging(args, default_level="INFO"):
    """Root logger: the level (`default_level` when none is given; None leaves logging as it is) and, with
    --console_log_file, a file instead of stderr."""
    level = args.console_log_level or default_level
    root = logging.getLogger()
    if args.console_log_file:
        handler = logging.FileHandler(args.console_log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        root.setLevel(level or "INFO")
    elif level is not None:
        logging.basicConfig(level=level, format=FORMAT)  # no-op when handlers exist (e.g. under pytest)
    if args.console_log_level:
        root.setLevel(args.console_log_level)
