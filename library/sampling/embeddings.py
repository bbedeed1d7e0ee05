"""Textual-inversion embeddings at generation time (kohya gen_img `--textual_inversion_embeddings`).

The trigger of each file is its stem (A1111 and kohya ignore a name stored inside). An embedding of N
vectors adds tokens `name, name1 .. name{N-1}` to every tokenizer, its vectors become the text encoders'
new rows (SDXL: clip_l into encoder 1, clip_g into encoder 2), and prompts are rewritten so each whole-word
`name` reads `name name1 ... name{N-1}` (also in negative prompts).
"""
import os

import numpy as np

from ..errors import UserError
from ..formats.embeddings import check_embedding_fits, read_embedding
from ..text.chunking import expand_embedding_tokens
from ..text.token_strings import add_token_string


def load_embeddings(bundle, paths, allow_pickle=False):
    """Register every embedding file with the bundle; returns {name: number of vectors}."""
    loaded = {}
    rows = [list(encoder.new_token_rows()) for encoder in bundle.text_encoders]
    dims = [encoder.hidden_size for encoder in bundle.text_encoders]
    for path in paths or []:
        embedding = read_embedding(path, allow_pickle=allow_pickle)
        name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
        if name.lower() in (n.lower() for n in loaded):
            raise UserError(f"--textual_inversion_embeddings: two files are named {name!r}; the file stem is the "
                            "prompt trigger, so it must be unique")
        vectors = check_embedding_fits(embedding, bundle.spec.family, dims)
        try:
            add_token_string(bundle.tokenizers, name, embedding.num_vectors)
        except UserError as e:
            raise UserError(f"embedding {path}: its trigger {name!r} (the file name) cannot be added as a new "
                            f"token: {e}") from e
        for encoder_rows, array in zip(rows, vectors):
            encoder_rows.extend(np.asarray(array, np.float32))
        loaded[name] = embedding.num_vectors
    if loaded:
        for encoder, encoder_rows in zip(bundle.text_encoders, rows):
            encoder.set_new_token_rows(np.stack(encoder_rows))
    return loaded


def expand_prompt(text, embeddings):
    """Rewrite embedding triggers in a prompt to their N token strings."""
    return expand_embedding_tokens(text, embeddings) if embeddings and text else text
