"""kohya sample-prompt files and in-line prompt options, as plain dicts with kohya's key names.

Files: .txt (one prompt a line, `#` comments), .toml (`[prompt]` defaults + `[[prompt.subset]]` entries),
.json (a list of strings or dicts). In-line options follow the prompt text, each as ` --x value`:
  --n negative prompt      --w / --h width / height   --d seed (gen_img: comma list, one per image)
  --s steps                --l CFG scale              --ss sampler      --nl negative scale (or none)
  --am network multipliers (comma list)               --ow --oh --nw --nh --ct --cl (SDXL conditioning)
  --f output file name
Dict keys are those kohya's TOML/JSON prompt files use: prompt, negative_prompt, width, height, seed,
sample_steps, scale, sample_sampler (plus seeds, negative_scale, network_multipliers, original_width,
original_height, original_width_negative, original_height_negative, crop_top, crop_left, filename).
"""
import json
import logging
import os
import re

import toml

from ..errors import UserError

_log = logging.getLogger(__name__)

DEFAULT_STEPS = 30
DEFAULT_SIZE = 512
DEFAULT_SCALE = 7.5

_NUMBER = r"(-?[\d.]+)"
_OPTIONS = [  # (option, regex for the value, key, converter); longest option names first
    ("ss", r"(.+)", "sample_sampler", str.strip),
    ("nl", r"(-?[\d.]+|none)", "negative_scale", lambda v: None if v.lower() == "none" else float(v)),
    ("am", r"([\d.,\-\s]+)", "network_multipliers", lambda v: [float(x) for x in v.split(",") if x.strip()]),
    ("ow", r"(\d+)", "original_width", int),
    ("oh", r"(\d+)", "original_height", int),
    ("nw", r"(\d+)", "original_width_negative", int),
    ("nh", r"(\d+)", "original_height_negative", int),
    ("ct", r"(\d+)", "crop_top", int),
    ("cl", r"(\d+)", "crop_left", int),
    ("w", r"(\d+)", "width", int),
    ("h", r"(\d+)", "height", int),
    ("d", r"([\d,\s]+)", "seeds", lambda v: [int(x) for x in v.split(",") if x.strip()]),
    ("s", r"(\d+)", "sample_steps", lambda v: max(1, min(1000, int(v)))),
    ("l", _NUMBER, "scale", float),
    ("n", r"(.*)", "negative_prompt", str.strip),
    ("f", r"(.+)", "filename", str.strip),
]


def parse_prompt_line(line):
    """'a cat --n blurry --w 768 --d 1,2' -> {'prompt': 'a cat', 'negative_prompt': 'blurry', ...}."""
    parts = line.strip().split(" --")
    result = {"prompt": parts[0].strip()}
    for part in parts[1:]:
        for name, pattern, key, convert in _OPTIONS:
            match = re.fullmatch(name + r"\s+" + pattern, part.strip(), re.IGNORECASE | re.DOTALL)
            if match is None:
                continue
            try:
                result[key] = convert(match.group(1))
            except ValueError as e:
                raise UserError(f"prompt option --{part.strip()!r} in {line.strip()!r}: {e}") from e
            break
        else:  # kohya ignores options it does not know (e.g. ControlNet's --cn); say so and go on
            _log.warning("ignoring unsupported prompt option --%s in %r (supported: %s)", part.strip(),
                         line.strip(), ", ".join("--" + o[0] for o in _OPTIONS))
    if "seeds" in result:
        result["seed"] = result["seeds"][0]
    return result


def load_prompt_file(path):
    """Every prompt of a .txt/.toml/.json prompt file as a dict (with 'enum' = its index)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8") as f:
            if ext == ".toml":
                entries = _toml_entries(toml.load(f), path)
            elif ext == ".json":
                entries = json.load(f)
            else:
                entries = [line.strip() for line in f]
                entries = [line for line in entries if line and not line.startswith("#")]
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except (toml.TomlDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"prompt file {path} is not valid {ext[1:].upper()}: {e}") from e
    if not isinstance(entries, list):
        raise UserError(f"prompt file {path}: expected a list of prompts, got {type(entries).__name__}")
    prompts = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = parse_prompt_line(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("prompt"), str):
            entry = {k: v for k, v in entry.items() if k != "subset"}
        else:
            raise UserError(f"prompt file {path}: entry {i} must be a string or a table with a 'prompt' string")
        entry["enum"] = i
        prompts.append(entry)
    return prompts


def _toml_entries(data, path):
    section = data.get("prompt")
    if not isinstance(section, dict) or not isinstance(section.get("subset"), list):
        raise UserError(f"prompt file {path}: expected a [prompt] table with [[prompt.subset]] entries")
    defaults = {k: v for k, v in section.items() if k != "subset"}
    return [{**defaults, **subset} for subset in section["subset"]]


def resolve_prompt_settings(entry, sampler, steps=DEFAULT_STEPS, width=DEFAULT_SIZE, height=DEFAULT_SIZE,
                            scale=DEFAULT_SCALE):
    """Fill a prompt dict's unset values from the defaults; sizes rounded down to /8, at least 64."""
    w = int(entry.get("width", width))
    h = int(entry.get("height", height))
    return {
        "prompt": entry.get("prompt", ""),
        "negative_prompt": entry.get("negative_prompt") or "",
        "width": max(64, w - w % 8),
        "height": max(64, h - h % 8),
        "sample_steps": max(1, min(1000, int(entry.get("sample_steps", steps)))),
        "scale": float(entry.get("scale", scale)),
        "seed": entry.get("seed"),
        "sample_sampler": entry.get("sample_sampler") or sampler,
    }
