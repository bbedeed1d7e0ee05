"""Read a TOML or JSON file into a dict; syntax errors name the file, line and column."""
import json
import os
import re
import tomllib

from ..errors import UserError


def _line_text(text, lineno):
    lines = text.splitlines()
    if 1 <= lineno <= len(lines):
        return f"\n    {lineno} | {lines[lineno - 1]}"
    return ""


def read_text(path, what):
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; expected a .toml or .json file")
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from e


def load_config_dict(path, what="dataset config"):
    """Parse `path` by its extension (.toml or .json)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".json"):
        raise UserError(f"{what} {path}: unsupported file format {ext or '(no extension)'}; use .toml or .json")
    text = read_text(path, what)
    if ext == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            message = str(e)
            match = re.search(r"line (\d+), column (\d+)", message)
            if match is None and "end of document" in message:  # e.g. an unclosed string or bracket
                lines = text.splitlines() or [""]
                message = message.replace("end of document", f"end of document: line {len(lines)}, column "
                                                             f"{len(lines[-1]) + 1}")
                match = re.search(r"line (\d+)", message)
            where = _line_text(text, int(match.group(1))) if match else ""
            raise UserError(f"{what} {path}: TOML syntax error: {message}{where}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path}: JSON syntax error: {e.msg} (at line {e.lineno}, column {e.colno})"
                        f"{_line_text(text, e.lineno)}") from e
