"""Validate a loaded dataset config against the schema and turn every problem into ONE readable message.

kohya prints voluptuous' `extra keys not allowed @ data['datasets'][0]['subsets'][0]['xxx']`; we say which file,
the TOML path (`datasets[0].subsets[1].num_repeat`), what was expected and the closest valid key."""
import difflib

from voluptuous import ALLOW_EXTRA, MultipleInvalid, Schema

from ..errors import UserError
from .params import ARGPARSE_ONLY_KEYS
from .schema import DATASET_ASCENDABLE, DROPOUT_ASCENDABLE, SchemaSet, plain_names

KIND_LABELS = {
    "dreambooth": "DreamBooth subset (image_dir + captions)",
    "finetuning": "fine-tuning subset (metadata_file)",
    "controlnet": "ControlNet subset (conditioning_data_dir)",
}


def format_path(parts):
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def subset_kind(subset):
    if isinstance(subset, dict) and "conditioning_data_dir" in subset:
        return "controlnet"
    if isinstance(subset, dict) and "metadata_file" in subset:
        return "finetuning"
    return "dreambooth"


class ConfigSanitizer:
    def __init__(self, support_dreambooth=True, support_finetuning=True, support_controlnet=False,
                 support_dropout=False):
        self.schemas = SchemaSet(support_dreambooth, support_finetuning, support_controlnet, support_dropout)

    def sanitize(self, config, file_label):
        """Return a normalized copy `{"general": {...}, "datasets": [{..., "subsets": [...]}]}` or raise UserError."""
        problems = []
        if not isinstance(config, dict):
            raise UserError(f"{file_label}: expected a table at the top level")
        for key in config:
            if key not in ("general", "datasets"):
                problems.append(self._unknown(key, [key], ["general", "datasets"], "top level"))
        general = self._check_table(config.get("general", {}), ["general"], self.schemas.general_keys(),
                                    "[general]", problems)
        datasets = []
        raw_datasets = config.get("datasets", [])
        if not isinstance(raw_datasets, list):
            problems.append(("datasets", "expected an array of tables: write [[datasets]] (double brackets)"))
            raw_datasets = []
        for i, raw in enumerate(raw_datasets):
            datasets.append(self._check_dataset(raw, i, problems))
        if problems:
            raise UserError(self._message(file_label, problems))
        return {"general": general or {}, "datasets": datasets}

    def _check_dataset(self, raw, i, problems):
        where = ["datasets", i]
        if not isinstance(raw, dict):
            problems.append((format_path(where), "expected a table ([[datasets]])"))
            return {}
        raw_subsets = raw.get("subsets", [])
        if not isinstance(raw_subsets, list):
            problems.append((format_path(where + ["subsets"]),
                             "expected an array of tables: write [[datasets.subsets]] (double brackets)"))
            raw_subsets = []
        kinds = [subset_kind(s) for s in raw_subsets]
        kind = kinds[0] if kinds else "dreambooth"
        if len(set(kinds)) > 1:
            listing = "; ".join(f"datasets[{i}].subsets[{j}] is a {KIND_LABELS[k]}" for j, k in enumerate(kinds))
            problems.append((format_path(where), f"subsets of different kinds cannot be mixed in the same dataset "
                             f"({listing}); put them in separate [[datasets]] tables"))
            return {}
        if kind not in self.schemas.supported_kinds():
            problems.append((format_path(where), f"{KIND_LABELS[kind]} is not supported by this trainer"))
            return {}
        body = {k: v for k, v in raw.items() if k != "subsets"}
        keys = {k: v for k, v in self.schemas.dataset_keys(kind).items() if k != "subsets"}
        dataset = self._check_table(body, where, keys, "[[datasets]]", problems, kind) or {}
        dataset["subsets"] = []
        for j, raw_subset in enumerate(raw_subsets):
            sub_where = where + ["subsets", j]
            if not isinstance(raw_subset, dict):
                problems.append((format_path(sub_where), "expected a table ([[datasets.subsets]])"))
                continue
            subset = self._check_table(raw_subset, sub_where, self.schemas.subset_keys(kind),
                                       "[[datasets.subsets]]", problems, kind)
            dataset["subsets"].append(subset or {})
        dataset["_kind"] = kind
        return dataset

    def _check_table(self, table, where, keys, level, problems, kind=None):
        if not isinstance(table, dict):
            problems.append((format_path(where), f"expected a table ({level})"))
            return None
        names = plain_names(keys)
        for key in table:
            if key not in names:
                problems.append(self._unknown(key, where + [key], names, level, kind))
        try:
            return Schema(keys, extra=ALLOW_EXTRA)({k: v for k, v in table.items() if k in names})
        except MultipleInvalid as e:
            for err in e.errors:
                path = format_path(where + list(err.path))
                if err.error_message.startswith("required key not provided"):
                    problems.append((path, f"required key missing in this {level} table"))
                else:
                    problems.append((path, err.error_message))
            return None

    def _unknown(self, key, path, valid_names, level, kind=None):
        key_text = str(key)
        hint = self._other_level_hint(key_text, level) or self._other_kind_hint(key_text, kind)
        if hint is None:
            close = difflib.get_close_matches(key_text, [str(n) for n in valid_names], n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys here: {', '.join(sorted(valid_names))}"
        return format_path(path), f"unknown key `{key_text}` in {level}; {hint}"

    def _other_level_hint(self, key, level):
        if key in ARGPARSE_ONLY_KEYS:
            return f"`{key}` can only be given on the command line (--{key}), not in the dataset config"
        if key in DROPOUT_ASCENDABLE and not self.schemas.support_dropout:
            return (f"caption dropout (`{key}`) is supported by train_network.py (LoRA) only, "
                    "not by textual inversion; remove it")
        if level == "[[datasets.subsets]]" and key in DATASET_ASCENDABLE:
            return f"`{key}` is a dataset-level key: put it in [[datasets]] or [general], not in a subset"
        if level != "[[datasets.subsets]]" and key in ("image_dir", "metadata_file", "conditioning_data_dir",
                                                      "is_reg", "alpha_mask"):
            return f"`{key}` belongs to a subset: put it in a [[datasets.subsets]] table"
        if key in ("subsets",) and level == "[general]":
            return "subsets belong to a dataset: write [[datasets.subsets]]"
        return None

    def _other_kind_hint(self, key, kind):
        for other in self.schemas.supported_kinds():
            if other != kind and kind is not None and key in plain_names(self.schemas.subset_keys(other)):
                return f"`{key}` is only valid in a {KIND_LABELS[other]}; this one is a {KIND_LABELS[kind]}"
        return None

    @staticmethod
    def _message(file_label, problems):
        lines = [f"{path}: {what}" for path, what in problems]
        if len(lines) == 1:
            return f"invalid dataset config {file_label}: {lines[0]}"
        return f"invalid dataset config {file_label} ({len(lines)} problems):\n  " + "\n  ".join(lines)
