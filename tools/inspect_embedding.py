"""What has a learned word become? For each vector of a textual-inversion embedding: the nearest vocabulary
tokens (cosine) in each text encoder of a model, and its norm against the vocabulary's; for two embeddings,
the cosine similarity of their vectors.

    python tools/inspect_embedding.py output/mytoy.safetensors --ckpt models/tiny-sd15.safetensors --top_k 5
    python tools/inspect_embedding.py a.safetensors b.safetensors --ckpt sdxl.safetensors --json

Only the token-embedding rows of the model are read (a single file's header says where they are; a diffusers
folder's text encoders are read whole). Token strings come from the bundled CLIP vocabulary (`</w>` ends a word).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import UserError, add_pickle_option, make_parser, positive, run_cli  # noqa: E402

ENCODER_NAMES = {"sd1": ["text_encoder"], "sd2": ["text_encoder"], "sdxl": ["clip_l", "clip_g"]}


def build_parser():
    p = make_parser(__doc__)
    p.add_argument("embeddings", type=str, nargs="+", help="one embedding file, or two to compare")
    p.add_argument("--ckpt", type=str, required=True,
                   help="the model whose vocabulary to compare with (.safetensors or a diffusers folder)")
    p.add_argument("--top_k", type=int, default=5, help="nearest tokens to list per vector (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_pickle_option(p)
    return p


def vocabulary_matrices(path, allow_pickle=False):
    """(family, [token embedding [vocab, dim] per text encoder]) of a checkpoint, reading only those tensors."""
    import numpy as np

    from library.checkpoints.components import folder_spec
    from library.checkpoints.diffusers_folder import TEXT_ENCODER_FOLDERS, read_component
    from library.checkpoints.layout import token_embedding_keys
    from library.formats.safetensors_io import read_header, read_safetensors

    if not os.path.exists(path):
        raise UserError(f"--ckpt {path} does not exist")
    if os.path.isdir(path):
        spec = folder_spec(path)
        matrices = []
        for index in range(len(spec.text_encoders)):
            encoder = read_component(path, TEXT_ENCODER_FOLDERS[index], allow_pickle)
            matrices.append(encoder["text_model.embeddings.token_embedding.weight"])
        family = spec.family
    elif path.lower().endswith(".safetensors"):
        family, keys = token_embedding_keys(read_header(path)[0])
        if family is None:
            raise UserError(f"--ckpt {path} holds no text-encoder token embedding (not a Stable Diffusion "
                            "checkpoint with its text encoders?)")
        tensors, _ = read_safetensors(path, keys=keys)
        matrices = [tensors[k] for k in keys]
    else:
        raise UserError(f"--ckpt {path}: expected a .safetensors file or a diffusers folder")
    return family, [np.asarray(m, dtype=np.float32) for m in matrices]


def _unit(rows):
    import numpy as np

    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def describe_vectors(vectors, vocabulary, top_k, tokens):
    """Per vector: norm, its percentile among the vocabulary's norms, the top_k nearest tokens (cosine)."""
    import numpy as np

    from library.text.tokenizer import token_text

    vocab_norms = np.linalg.norm(vocabulary, axis=1)
    similarities = _unit(vectors) @ _unit(vocabulary).T  # [n, vocab]
    found = []
    for index, (vector, row) in enumerate(zip(vectors, similarities)):
        top = np.argsort(-row, kind="stable")[:top_k]
        norm = float(np.linalg.norm(vector))
        found.append({"index": index, "norm": norm,
                      "norm_percentile": float(100.0 * np.mean(vocab_norms < norm)),
                      "nearest": [{"token": tokens.get(int(i), f"<id {int(i)}>"), "id": int(i),
                                   "text": token_text(tokens.get(int(i), f"<id {int(i)}>")), "cosine": float(row[i])}
                                  for i in top]})
    stats = {"mean": float(vocab_norms.mean()), "std": float(vocab_norms.std()), "min": float(vocab_norms.min()),
             "max": float(vocab_norms.max())}
    return found, stats


def cosine_matrix(a, b):
    return (_unit(a) @ _unit(b).T).tolist()


def inspect(paths, ckpt, top_k=5, allow_pickle=False):
    from library.formats.embeddings import check_embedding_fits, read_embedding
    from library.text.tokenizer import vocab_and_merges

    embeddings = [read_embedding(p, allow_pickle=allow_pickle) for p in paths]
    family, vocabularies = vocabulary_matrices(ckpt, allow_pickle)
    dims = [v.shape[1] for v in vocabularies]
    fitted = [check_embedding_fits(e, family, dims) for e in embeddings]
    tokens = {index: token for token, index in vocab_and_merges()[0].items()}
    report = {"model": ckpt, "family": family, "embeddings": []}
    for path, embedding, per_encoder in zip(paths, embeddings, fitted):
        entry = {"file": path, "name": embedding.name, "num_vectors": embedding.num_vectors, "encoders": []}
        for name, vectors, vocabulary in zip(ENCODER_NAMES[family], per_encoder, vocabularies):
            found, stats = describe_vectors(vectors, vocabulary, top_k, tokens)
            entry["encoders"].append({"encoder": name, "dim": int(vectors.shape[1]), "vocabulary_norm": stats,
                                      "vectors": found})
        report["embeddings"].append(entry)
    if len(embeddings) == 2:
        report["similarity"] = {"a": embeddings[0].name, "b": embeddings[1].name, "encoders": [
            {"encoder": name, "cosine": cosine_matrix(a, b)}
            for name, a, b in zip(ENCODER_NAMES[family], fitted[0], fitted[1])]}
    return report


def as_text(report):
    lines = [f"model {report['model']} ({report['family']})"]
    for entry in report["embeddings"]:
        lines.append(f"{entry['name']} ({entry['file']}): {entry['num_vectors']} vector(s)")
        for encoder in entry["encoders"]:
            s = encoder["vocabulary_norm"]
            lines.append(f"  {encoder['encoder']} (dim {encoder['dim']}): vocabulary norms mean {s['mean']:.4g}, "
                         f"std {s['std']:.4g}, min {s['min']:.4g}, max {s['max']:.4g}")
            for v in encoder["vectors"]:
                nearest = ", ".join(f"{n['text']!r} ({n['cosine']:.3f})" for n in v["nearest"])
                lines.append(f"    vector {v['index']}: norm {v['norm']:.4g} (above {v['norm_percentile']:.1f}% "
                             f"of the vocabulary) nearest: {nearest}")
    if "similarity" in report:
        sim = report["similarity"]
        lines.append(f"cosine similarity, rows {sim['a']} vectors, columns {sim['b']} vectors:")
        for encoder in sim["encoders"]:
            lines.append(f"  {encoder['encoder']}:")
            lines += ["    " + " ".join(f"{c:7.4f}" for c in row) for row in encoder["cosine"]]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if len(args.embeddings) > 2:
        raise UserError(f"give one embedding, or two to compare; got {len(args.embeddings)}")
    positive("--top_k", args.top_k)
    report = inspect(args.embeddings, args.ckpt, args.top_k, args.allow_unsafe_pickle)
    print(json.dumps(report, indent=2) if args.json else as_text(report))
    return 0


if __name__ == "__main__":
    run_cli(main)
