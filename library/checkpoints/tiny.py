"""Tiny random models saved as single-file checkpoints: the quick start and the tests load them through
the normal loader, exactly like a downloaded checkpoint."""
import os

import numpy as np

from ..formats.safetensors_io import write_safetensors
from ..models.configs import get_spec
from .layout import join_single_file
from .spec_metadata import spec_to_metadata


def _random_weights(names_and_shapes, rng):
    """Seeded values with sensible scales: 1-D weights are norm scales (ones), biases small, matrices and
    convolutions ~ N(0, 1/fan_in), embeddings N(0, 0.02)."""
    out = {}
    for name, shape in names_and_shapes:
        if len(shape) == 1:
            value = np.ones(shape) if name.endswith("weight") else rng.normal(0.0, 0.01, shape)
        elif "embedding" in name:
            value = rng.normal(0.0, 0.02, shape)
        else:
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        out[name] = value.astype(np.float32)
    return out


def _cell_shapes(cell):
    return [(n, tuple(p.shape)) for n, p in cell.parameters_and_names() if ".adapters." not in f".{n}"]


def tiny_components(spec, seed=0):
    """Seeded random {"unet", "vae", "text_encoders"} tensors with the names and shapes of our Cells."""
    from ..models.bundle import build_bundle
    from ..models.layers import lazy_parameters

    with lazy_parameters():  # only names and shapes are needed
        bundle = build_bundle(spec, with_tokenizers=False)
    rng = np.random.default_rng(seed)
    return {"unet": _random_weights(_cell_shapes(bundle.unet), rng),
            "vae": _random_weights(_cell_shapes(bundle.vae), rng),
            "text_encoders": [_random_weights(_cell_shapes(e), rng) for e in bundle.text_encoders]}


def ensure_tiny_checkpoint(spec_name, path, seed=0):
    """Create `path` (a single-file checkpoint of the named tiny spec, seeded) unless it exists; return path."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    spec = get_spec(spec_name)
    tensors = join_single_file(tiny_components(spec, seed), spec)
    metadata = dict(spec_to_metadata(spec), **{"ms_sd.tiny_seed": str(seed)})
    write_safetensors(path, tensors, metadata)
    return path
