"""Convert a textual-inversion embedding between the Web UI `.pt`, kohya `.safetensors` and diffusers layouts.

    python tools/convert_embedding.py mytoy.pt mytoy.safetensors --allow_unsafe_pickle
    python tools/convert_embedding.py mytoy.safetensors mytoy.pt
    python tools/convert_embedding.py learned_embeds.bin mytoy.safetensors --allow_unsafe_pickle
    python tools/convert_embedding.py mytoy.safetensors learned_embeds.bin --token "<mytoy>"

Layouts (OUT's extension chooses, --to overrides):
  safetensors  kohya: {"emb_params": [n, dim]}; SDXL {"clip_l", "clip_g"}           (.safetensors)
  pt           AUTOMATIC1111: {"string_to_param": {"*": [n, dim]}, "name", ...}; SDXL {"clip_l", "clip_g"} (.pt)
  diffusers    {token: [n, dim]} as diffusers' textual-inversion training saves it  (.bin, or .safetensors with --to)
Any layout A1111 reads is accepted as input (A1111 PNG cards included). The vectors are copied bit for bit in
their stored dtype unless --save_precision says otherwise. Pickle files (.pt/.bin) are read only with
--allow_unsafe_pickle, by a reader that builds tensors and containers only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import UserError, add_pickle_option, make_parser, run_cli, say, setup_logging  # noqa: E402

LAYOUTS = ("safetensors", "pt", "diffusers")
LAYOUT_BY_EXTENSION = {".safetensors": "safetensors", ".pt": "pt", ".bin": "diffusers"}
EXTENSIONS = {"safetensors": (".safetensors",), "pt": (".pt",), "diffusers": (".bin", ".safetensors")}


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("input", type=str, help="the embedding to read")
    p.add_argument("output", type=str, help="the file to write")
    p.add_argument("--to", type=str, default=None, choices=LAYOUTS, help="the output layout (default: from OUT's "
                                                                         "extension)")
    p.add_argument("--token", type=str, default=None,
                   help="the word stored in the file (A1111 `name`, the diffusers key); default: the input's token "
                        "or file name")
    p.add_argument("--save_precision", type=str, default=None, choices=("fp32", "fp16", "bf16"),
                   help="dtype of the saved vectors (default: the input's)")
    add_pickle_option(p)
    return p


def output_layout(args):
    extension = os.path.splitext(args.output)[1].lower()
    layout = args.to or LAYOUT_BY_EXTENSION.get(extension)
    if layout is None:
        raise UserError(f"{args.output}: cannot tell the layout from {extension or 'no extension'!r}; use "
                        ".safetensors, .pt or .bin, or --to")
    if extension not in EXTENSIONS[layout]:
        raise UserError(f"--to {layout} writes {' or '.join(EXTENSIONS[layout])} files, not {args.output}")
    return layout


def check_args(args):
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise UserError(f"{args.output} is the input file; write the conversion to another file")
    return output_layout(args)


def convert(embedding, path, layout, token, save_precision, metadata=None):
    from library.formats.embeddings import save_embedding_diffusers, save_embedding_pt, save_embedding_safetensors

    family = "sdxl" if embedding.is_sdxl else "sd1"  # (only SDXL's two-encoder layout differs)
    vectors = [embedding.vectors[k] for k in (("clip_l", "clip_g") if embedding.is_sdxl else ("emb",))]
    if layout == "safetensors":
        save_embedding_safetensors(path, family, vectors, metadata, save_precision)
    elif layout == "pt":
        save_embedding_pt(path, family, vectors, token, step=embedding.step, save_precision=save_precision)
    else:
        save_embedding_diffusers(path, vectors, token, save_precision)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    layout = check_args(args)

    from library.formats.embeddings import read_embedding
    from library.formats.safetensors_io import read_header

    embedding = read_embedding(args.input, allow_pickle=args.allow_unsafe_pickle)
    if embedding.is_sdxl and layout == "diffusers":
        raise UserError(f"{args.input} is an SDXL embedding (clip_l + clip_g), which has no diffusers {{token: "
                        "tensor} layout: write .safetensors or .pt (diffusers loads that file once per text "
                        "encoder)")
    metadata = read_header(args.input)[1] if args.input.lower().endswith(".safetensors") else None
    token = args.token or embedding.token or embedding.name
    precision = args.save_precision or embedding.precision
    convert(embedding, args.output, layout, token, precision, metadata if layout == "safetensors" else None)
    shape = " + ".join(f"{k} {list(v.shape)}" for k, v in embedding.vectors.items())
    say(f"wrote {args.output} ({layout} layout, {shape}, {precision}, token {token!r})")
    return 0


if __name__ == "__main__":
    run_cli(main)
