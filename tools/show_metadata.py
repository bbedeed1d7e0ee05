"""Show a model file's metadata, and optionally its tensors and hashes (kohya tools/show_metadata.py).

    python tools/show_metadata.py --model lora.safetensors            # the metadata as sorted JSON (kohya)
    python tools/show_metadata.py --model lora.safetensors --keys --hashes
    python tools/show_metadata.py --model emb.safetensors --keys --json

For LoRAs, embeddings and checkpoints alike: the safetensors header is read without the tensor data; --hashes
reads the file for the full sha256 (A1111's short hash is its start), A1111's legacy model hash, the addnet
hash (sha256 of the data region) and, for files with kohya's sshs_* keys, the recomputed sshs hashes.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import UserError, add_pickle_option, make_parser, run_cli  # noqa: E402

EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g"}


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("model_file", nargs="?", default=None, help="the file (same as --model)")
    p.add_argument("--model", type=str, default=None, help="the file to show (.safetensors; pickles with "
                                                           "--allow_unsafe_pickle)")
    p.add_argument("--keys", action="store_true", help="also list every tensor: name, dtype, shape")
    p.add_argument("--hashes", action="store_true", help="also compute the file's hashes")
    p.add_argument("--json", action="store_true", help="print one JSON object (metadata, tensors, hashes)")
    add_pickle_option(p)
    return p


def file_kind(names):
    """A word for what the file holds, from its tensor names."""
    from library.formats.lora import KOHYA_PREFIXES

    names = list(names)
    if any(n.startswith(KOHYA_PREFIXES) or ".lora_" in n or "lora_A" in n for n in names):
        return "LoRA"
    if set(names) <= EMBEDDING_KEYS or any(n.startswith("string_to_param") for n in names):
        return "embedding"
    if any(n.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
           for n in names):
        return "checkpoint"
    return "tensors"


def hashes(path, metadata):
    from library.formats.lora import checkpoint_hashes, file_addnet_hash, lora_hashes
    from library.formats.safetensors_io import read_safetensors

    legacy, full = checkpoint_hashes(path)
    found = {"sha256": full, "a1111_short_hash": full[:10], "a1111_legacy_model_hash": legacy,
             "addnet_hash": file_addnet_hash(path)}
    if path.lower().endswith(".safetensors") and any(k.startswith("sshs_") for k in metadata):
        tensors, _ = read_safetensors(path, bf16_as_float32=False)
        model_hash, legacy_hash = lora_hashes(tensors, metadata)
        found["sshs_model_hash"] = {"stored": metadata.get("sshs_model_hash"), "recomputed": model_hash}
        found["sshs_legacy_hash"] = {"stored": metadata.get("sshs_legacy_hash"), "recomputed": legacy_hash}
    return found


def _text(report):
    lines = []
    if report["metadata"]:
        lines.append(json.dumps(report["metadata"], indent=4, sort_keys=True))
    else:
        print("No metadata found", file=sys.stderr)
    if "tensors" in report:
        tensors = report["tensors"]
        count = sum(int(_product(t["shape"])) for t in tensors.values())
        lines.append(f"{report['kind']}: {len(tensors)} tensors, {count:,} values")
        width = max((len(n) for n in tensors), default=0)
        lines += [f"{name:{width}}  {t['dtype']:5}  {t['shape']}" for name, t in tensors.items()]
    for name, value in report.get("hashes", {}).items():
        if isinstance(value, dict):
            same = "matches" if value["stored"] == value["recomputed"] else "DIFFERS"
            value = f"stored {value['stored']}, recomputed {value['recomputed']} ({same})"
        lines.append(f"{name}: {value}")
    return "\n".join(lines)


def _product(shape):
    total = 1
    for d in shape:
        total *= d
    return total


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = args.model or args.model_file
    if not path:
        raise UserError("give the file to show: --model FILE")
    if args.model and args.model_file and args.model != args.model_file:
        raise UserError(f"two files given ({args.model_file} and --model {args.model}); show one at a time")

    from library.formats.tensor_files import tensor_file_header

    infos, metadata = tensor_file_header(path, args.allow_unsafe_pickle)
    report = {"file": path, "kind": file_kind(infos), "metadata": metadata}
    if args.keys or args.json:
        report["tensors"] = {name: {"dtype": dtype, "shape": list(shape)} for name, (dtype, shape) in infos.items()}
    if args.hashes:
        report["hashes"] = hashes(path, metadata)
    print(json.dumps(report, indent=2) if args.json else _text(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
