"""Textual inversion as a training method: new token rows in every text encoder, nothing else trains.

The encoders keep their frozen tables; each gets a small trainable [N, dim] Parameter for ids >= 49408
(see library/models/clip.py), so only those rows can change (weight decay included) and the optimizer state
is tiny. SDXL trains rows in both encoders (768 and 1280 wide) and saves them as `clip_l` / `clip_g`.
"""
import logging

import numpy as np

from ..errors import UserError
from ..text.token_strings import init_ids
from .method import DiffusionMethod

log = logging.getLogger("sdms.training")


def warn_network_multipliers(group):
    """A dataset's network_multiplier scales a LoRA's output; textual inversion trains no network."""
    odd = [f"{d.params.source}: {d.params.network_multiplier:g}" for d in group.datasets
           if d.params.network_multiplier != 1.0]
    if odd:
        log.warning("network_multiplier is ignored by textual inversion (it scales a LoRA network, and none is "
                    "trained here): %s", ", ".join(odd))


class TextualInversion(DiffusionMethod):
    def __init__(self, args, bundle, token_ids):
        """token_ids: the ids `add_new_tokens` gave T, T1.. on bundle.tokenizers (added before the dataset is
        built, so captions tokenize to them)."""
        super().__init__(args, bundle)
        self.token_string = args.token_string
        self.num_vectors = args.num_vectors_per_token
        self.token_ids = token_ids
        rows = self._initial_rows(args)
        self.freeze_all()
        params = [encoder.set_new_token_rows(r) for encoder, r in zip(bundle.text_encoders, rows)]
        for p in params:
            p.requires_grad = True
        # keyed by encoder: standalone encoders (SDXL's two) give their rows the same parameter name
        self.trainable = {f"text_encoder_{index}.new_rows": p for index, p in enumerate(params)}
        self.build_objective()

    # ------------------------------------------------------------------ initial vectors
    def _initial_rows(self, args):
        encoders, tokenizers = self.bundle.text_encoders, self.bundle.tokenizers
        if args.weights:
            return self._rows_from_file(args.weights)
        if args.init_word:
            return [encoder.token_embedding_rows(init_ids(tokenizer, args.init_word, self.num_vectors))
                    for encoder, tokenizer in zip(encoders, tokenizers)]
        # No init word: draw from the statistics of the existing table so the vectors start "in range".
        rng = np.random.default_rng(args.seed if args.seed is not None else 0)
        rows = []
        for encoder in encoders:
            table = encoder.text_model.embeddings.token_embedding.weight.asnumpy()
            mean, std = table.mean(axis=0), table.std(axis=0)
            rows.append((mean + std * rng.standard_normal((self.num_vectors, table.shape[1]))).astype(np.float32))
        return rows

    def _rows_from_file(self, path):
        from ..formats.embeddings import read_embedding, check_embedding_fits

        embedding = read_embedding(path, allow_pickle=self.args.allow_unsafe_pickle)
        dims = [encoder.hidden_size for encoder in self.bundle.text_encoders]
        try:
            vectors = check_embedding_fits(embedding, self.spec.family, dims)
        except UserError as e:  # name the option and file the user gave
            raise UserError(f"--weights {path}: {e}") from e
        rows = [np.asarray(v, np.float32) for v in vectors]
        if rows[0].shape[0] != self.num_vectors:
            raise UserError(f"--weights {path}: the embedding has {rows[0].shape[0]} vectors but "
                            f"--num_vectors_per_token is {self.num_vectors}; make them equal")
        return rows

    # ------------------------------------------------------------------ saving
    @property
    def file_extension(self):
        return ".pt" if self.args.save_model_as == "pt" else ".safetensors"

    def vectors(self):
        return [encoder.new_token_rows() for encoder in self.bundle.text_encoders]

    def save(self, path, step, epoch):
        from ..formats.embeddings import save_embedding
        from .model_spec import model_spec_metadata

        metadata = model_spec_metadata(self.args, self.spec, "textual_inversion")
        save_embedding(path, self.spec.family, self.vectors(), self.token_string, metadata=metadata,
                       save_precision=self.args.save_precision or "fp32", step=step,
                       sd_checkpoint_name=self.checkpoint_stem())
