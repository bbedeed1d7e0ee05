"""`--config_file x.toml`: training arguments in a TOML. All tables are flattened (section names are only for
the reader), the values become argparse defaults, so flags given explicitly on the command line win.
`--output_config`: write the arguments that differ from the defaults to the `--config_file` path and exit."""
import argparse
import difflib
import logging
import os
import sys

import toml

from ..errors import UserError
from ..fileio import atomic_write
from .kohya_options import CONFIG_VALUE_MEANS_DEFAULT, GUI_KEYS, all_kohya_option_names, kohya_scripts_with
from .loader import load_config_dict

log = logging.getLogger("sdms.config")
NOT_SAVED = ("config_file", "output_config", "wandb_api_key", "huggingface_token")


def _toml_path(path):
    return path if path.endswith(".toml") else path + ".toml"


def flatten_sections(config):
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for inner_key, inner_value in value.items():
                flat[inner_key] = inner_value
        else:
            flat[key] = value
    return flat


def _destinations(parser):
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _config_keys(parser):
    """TOML key -> action: every dest and every long option name (aliases such as `caption_extention`)."""
    keys = {}
    for action in parser._actions:
        if action.dest in ("help", argparse.SUPPRESS):
            continue
        keys[action.dest] = action
        for option in action.option_strings:
            if option.startswith("--"):
                keys.setdefault(option[2:], action)
    return keys


def _check_value(path, key, action, value):
    """argparse would reject a bad default with a usage dump that does not name the file; say where it is."""
    if value is None:  # an unused value the GUI writes, meaning the default
        return
    where = f"--config_file {path}: `{key}` = {value!r}"
    if action.nargs == 0:  # store_true / store_false flags
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false")
        return
    for item in value if isinstance(value, list) else [value]:
        if action.type in (int, float) and not isinstance(item, str):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or (action.type is int
                                                                                 and not isinstance(item, int)):
                raise UserError(f"{where}: expected {'an integer' if action.type is int else 'a number'}")
        elif action.type is not None and isinstance(item, str):
            try:
                item = action.type(item)
            except (TypeError, ValueError) as e:
                raise UserError(f"{where}: not a valid value ({e})") from e
        if action.choices is not None and item not in action.choices:
            raise UserError(f"{where}: expected one of {', '.join(map(str, action.choices))}")


def _to_default(action, value):
    """TOML values become defaults; argparse converts string defaults with `type`, other values stay typed.
    Lists for single-value options (e.g. resolution = [512, 768]) are joined the way the flag is written.
    kohya reads the TOML without argparse's checks, and GUI files rely on it: 1/0 for flags, 64.0 for an
    integer, [] or "" for an unused value, 75 for the default max_token_length."""
    if action.nargs == 0 and isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if action.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if value in ([], "") and action.default is None:  # what GUI files write for "none"
        return None
    if value in CONFIG_VALUE_MEANS_DEFAULT.get(action.dest, ()):
        return action.default
    if isinstance(value, list) and action.nargs in (None, "?"):
        return ",".join(str(v) for v in value)
    return value


def load_config_file(parser, argv):
    args = parser.parse_args(argv)
    if not getattr(args, "config_file", None):
        if getattr(args, "output_config", False):
            raise UserError("--output_config needs --config_file <file.toml> (where to write the arguments)")
        return args
    path = _toml_path(args.config_file)
    if args.output_config:
        write_config_file(parser, args, path)
        sys.exit(0)
    values = flatten_sections(load_config_dict(path, "--config_file"))
    actions = _config_keys(parser)
    script = getattr(parser, "kohya_script", None)
    defaults, skipped, foreign = {}, [], []
    for key, value in values.items():
        if key not in actions:
            if key in all_kohya_option_names() and script:
                foreign.append(key)  # a kohya option of another script: as on the command line, not ours
                continue
            # kohya_ss GUI bookkeeping and other tools' keys are skipped; a near miss of an option of ours is
            # a typo
            if key not in GUI_KEYS and key not in all_kohya_option_names():
                close = difflib.get_close_matches(key, list(actions), n=1, cutoff=0.8)
                if close:
                    raise UserError(f"--config_file {path}: unknown argument `{key}`; did you mean `{close[0]}`?")
            skipped.append(key)
            continue
        action = actions[key]
        defaults[action.dest] = _to_default(action, value)
        _check_value(path, key, action, defaults[action.dest])
    if foreign:
        owners = sorted({s for key in foreign for s in kohya_scripts_with(key)})
        one = len(foreign) == 1
        raise UserError(f"--config_file {path}: {', '.join(foreign)} {'is an option' if one else 'are options'} "
                        f"of kohya's {', '.join(o + '.py' for o in owners)}, not of {script}.py; remove "
                        f"{'it' if one else 'them'} (a file made for another script?)")
    if skipped:
        log.warning("--config_file %s: skipping %s (no option of kohya's scripts: kohya_ss GUI settings or "
                    "other tools' options)", path, ", ".join(skipped))
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def non_default_args(parser, args):
    defaults = {dest: action.default for dest, action in _destinations(parser).items()}
    out = {}
    for key, value in vars(args).items():
        if key in NOT_SAVED or value is None:
            continue
        if key in defaults and value == defaults[key]:
            continue
        out[key] = list(value) if isinstance(value, tuple) else (os.fspath(value) if hasattr(value, "__fspath__")
                                                                 else value)
    return out


def write_config_file(parser, args, path):
    if os.path.exists(path):
        raise UserError(f"--output_config: {path} already exists; choose another --config_file or delete it")
    content = toml.dumps(non_default_args(parser, args))
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(content)
    print(f"saved the arguments to {path}")
