"""Textual-inversion embedding files: read every layout A1111 accepts, write kohya/A1111 layouts.

Read (A1111 order, first match wins): A1111 `{"string_to_param": {"*": [n, dim]}, ...}`; SDXL
`{"clip_l": [n, 768], "clip_g": [n, 1280]}`; a dict with one tensor (kohya `{"emb_params": ...}`, diffusers
`{"<token>": ...}`); a 1-D tensor is one vector. `.safetensors` is read with numpy; `.pt`/`.bin` are pickles and
are read only when the caller passes allow_pickle=True (CLI: `--allow_unsafe_pickle`): first by a restricted
torch-free reader, then by torch.load if torch is installed and the file needs more.
The name of an embedding is its file stem (A1111 and kohya gen_img ignore a `name` inside the file), except for
A1111 PNG cards (`sd-ti-embedding` text chunk), named by their `name` entry as A1111 does.

Write: `.safetensors` as kohya (`{"emb_params": [n, dim]}` SD1/SD2, `{"clip_l", "clip_g"}` SDXL, SAI model-spec
metadata), `.pt` in A1111's layout (SD1/SD2; `name` makes it loadable by diffusers too) or the SDXL dict,
written without torch. Save precision fp32/fp16/bf16 (bf16 is stored as real bfloat16 in both formats).
"""
import base64
import dataclasses
import datetime
import json
import os
import zipfile

import numpy as np

from ..errors import UserError
from .safetensors_io import Bf16Tensor, read_safetensors, write_safetensors
from .torch_zip import UnsupportedTorchFile, read_torch_file, write_torch_file

PICKLE_EXTENSIONS = (".pt", ".bin", ".ckpt")
SDXL_KEYS = ("clip_l", "clip_g")
FAMILY_TITLES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
DIM_HINTS = {768: "SD1.x / SDXL clip_l (CLIP ViT-L)", 1024: "SD2.x (OpenCLIP ViT-H)",
             1280: "SDXL clip_g (OpenCLIP ViT-bigG)"}
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")
MODELSPEC_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


@dataclasses.dataclass
class Embedding:
    name: str
    vectors: dict  # "emb" -> [n, dim] for SD1/SD2 files; "clip_l"/"clip_g" for SDXL files (float32)
    num_vectors: int
    step: int = None  # A1111 files record the optimizer steps done
    precision: str = "fp32"  # the stored dtype: "fp32" | "fp16" | "bf16" (vectors are float32 either way)
    token: str = None  # the key of a diffusers-style {token: tensor} file

    @property
    def is_sdxl(self):
        return "clip_l" in self.vectors


def read_embedding(path, allow_pickle=False):
    """Read an embedding file (.safetensors always; .pt/.bin only with allow_pickle=True)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"embedding file {path} does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"embedding file {path} is empty")
    stem, extension = os.path.splitext(os.path.basename(path))
    extension = extension.lower()
    if extension == ".safetensors":
        data, _ = read_safetensors(path, bf16_as_float32=False)
    elif extension in PICKLE_EXTENSIONS:
        data = _read_pickle(path, allow_pickle)
    elif extension == ".png":
        data = _read_png_text(path)
        stem = data.get("name") if isinstance(data.get("name"), str) and data["name"] else stem
    else:
        raise UserError(f"embedding file {path}: unsupported extension {extension!r}; "
                        "expected .safetensors, .png (A1111 card) or .pt/.bin with --allow_unsafe_pickle")
    return _from_data(path, stem, data)


def _read_pickle(path, allow_pickle):
    """Needs the user's consent. Tries the restricted torch-free reader first (it only builds containers,
    scalars and arrays); files it cannot read go to torch.load when torch is installed."""
    if not allow_pickle:
        raise UserError(f"{path} is a pickle file (.pt/.bin), which can run arbitrary code when loaded. If you trust "
                        "it, pass --allow_unsafe_pickle; or convert it to .safetensors")
    try:
        return read_torch_file(path, bf16_as_float32=False)
    except UnsupportedTorchFile as e:
        reason = str(e)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} needs PyTorch to be read ({reason}) and torch is not installed. Convert it to "
                        ".safetensors where torch is available, e.g. python -c \"import torch; "
                        "from safetensors.torch import save_file; d = torch.load('in.pt'); "
                        "t = d['string_to_param']['*'] if 'string_to_param' in d else d; "
                        "save_file({'emb_params': t} if torch.is_tensor(t) else t, 'out.safetensors')\"") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - old files hold objects the safe loader refuses
        pass
    try:  # the user consented to unsafe pickles
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"cannot read the pickle file {path}: {e}") from e


def _read_png_text(path):
    """A1111 embedding card: a PNG whose `sd-ti-embedding` text chunk is base64(JSON) of the A1111 dict, tensors
    written as {"TORCHTENSOR": nested lists}. (Cards with only the pixel-encoded copy are not supported.)"""
    from PIL import Image

    try:
        with Image.open(path) as image:
            encoded = getattr(image, "text", {}).get("sd-ti-embedding")
    except OSError as e:
        raise UserError(f"cannot read the image {path}: {e}") from e
    if encoded is None:
        raise UserError(f"{path} has no 'sd-ti-embedding' text chunk; it is not an A1111 embedding card that this "
                        "program can read (convert the embedding to .safetensors)")

    def tensors(obj):
        return np.asarray(obj["TORCHTENSOR"], dtype=np.float32) if "TORCHTENSOR" in obj else obj

    try:
        return json.loads(base64.b64decode(encoded), object_hook=tensors)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: the 'sd-ti-embedding' text chunk is not valid base64 JSON ({e})") from e


def _to_numpy(value):
    if isinstance(value, Bf16Tensor):
        return value.to_float32()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    if hasattr(value, "detach"):  # torch tensor or Parameter (bf16 has no numpy view: go through float32)
        return value.detach().cpu().float().numpy()
    return None


def _precision(value):
    """The stored dtype of a tensor as a save precision name."""
    if isinstance(value, Bf16Tensor):
        return "bf16"
    name = str(getattr(value, "dtype", "float32"))
    return {"float16": "fp16", "torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(name, "fp32")


def _as_matrix(path, key, value):
    array = _to_numpy(value)
    if array is None:
        raise UserError(f"embedding file {path}: {key!r} is not a tensor")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise UserError(f"embedding file {path}: {key!r} has shape {list(array.shape)}, expected [num_vectors, dim]")
    return np.ascontiguousarray(array, dtype=np.float32)


def _from_data(path, name, data):
    step, token = None, None
    if _to_numpy(data) is not None:  # a bare tensor
        vectors = {"emb": _as_matrix(path, "tensor", data)}
        first = data
    elif not isinstance(data, dict):
        raise UserError(f"embedding file {path}: expected a dict of tensors, found {type(data).__name__}")
    elif "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # old files hold a torch ParameterDict
        if not isinstance(params, dict) or len(params) != 1:
            count = len(params) if isinstance(params, dict) else "no"
            raise UserError(f"embedding file {path}: string_to_param must hold exactly one tensor, found {count}")
        first = next(iter(params.values()))
        vectors = {"emb": _as_matrix(path, "string_to_param", first)}
        step = data.get("step") if isinstance(data.get("step"), int) else None
    elif any(key in data for key in SDXL_KEYS):
        missing = [key for key in SDXL_KEYS if key not in data]
        if missing:
            raise UserError(f"embedding file {path}: an SDXL embedding needs both clip_l and clip_g; {missing[0]} "
                            "is missing")
        vectors = {key: _as_matrix(path, key, data[key]) for key in SDXL_KEYS}
        first = data["clip_l"]
        counts = {key: v.shape[0] for key, v in vectors.items()}
        if counts["clip_l"] != counts["clip_g"]:
            raise UserError(f"embedding file {path}: clip_l has {counts['clip_l']} vectors but clip_g has "
                            f"{counts['clip_g']}; they must match")
    else:
        tensors = {k: v for k, v in data.items() if _to_numpy(v) is not None}
        if len(tensors) != 1:
            raise UserError(f"embedding file {path}: cannot identify the embedding; expected string_to_param, "
                            f"clip_l + clip_g, or exactly one tensor, found keys {sorted(map(str, data))[:8]}")
        key, first = next(iter(tensors.items()))
        vectors = {"emb": _as_matrix(path, key, first)}
        token = str(key) if key != "emb_params" else None
    num_vectors = next(iter(vectors.values())).shape[0]
    return Embedding(name=name, vectors=vectors, num_vectors=num_vectors, step=step, precision=_precision(first),
                     token=token)


def _describe(embedding):
    if embedding.is_sdxl:
        return (f"an SDXL embedding (clip_l {embedding.vectors['clip_l'].shape[1]}, "
                f"clip_g {embedding.vectors['clip_g'].shape[1]})")
    dim = embedding.vectors["emb"].shape[1]
    return f"a {dim}-wide embedding ({DIM_HINTS.get(dim, 'no known model')})"


def check_embedding_fits(embedding, family, dims):
    """Vectors per text encoder ([n, dims[i]] each) or a UserError saying which model the file is for.

    family: "sd1" | "sd2" | "sdxl"; dims: the text encoders' hidden sizes in order (e.g. [768] or [768, 1280]).
    """
    model = f"the {FAMILY_TITLES.get(family, family)} model (text encoder width {' + '.join(map(str, dims))})"
    where = f"embedding {embedding.name!r}"
    if family == "sdxl":
        if not embedding.is_sdxl:
            raise UserError(f"{where} is {_describe(embedding)}, but {model} needs an SDXL file with clip_l and "
                            "clip_g")
        found = [embedding.vectors["clip_l"], embedding.vectors["clip_g"]]
    else:
        if embedding.is_sdxl:
            raise UserError(f"{where} is {_describe(embedding)} and does not fit {model}")
        found = [embedding.vectors["emb"]]
    if len(found) != len(dims) or any(v.shape[1] != d for v, d in zip(found, dims)):
        raise UserError(f"{where} is {_describe(embedding)} and does not fit {model}")
    return found


def _cast(array, save_precision):
    array = np.ascontiguousarray(array, dtype=np.float32)
    if save_precision in (None, "fp32", "float"):
        return array
    if save_precision == "fp16":
        return array.astype(np.float16)
    if save_precision == "bf16":
        return Bf16Tensor.from_float32(array)
    raise UserError(f"--save_precision must be one of {', '.join(SAVE_PRECISIONS)}, got {save_precision!r}")


def _tensors_for(family, vectors, save_precision):
    """vectors: list of [n, dim] arrays, one per text encoder."""
    if family == "sdxl":
        if len(vectors) != 2 or vectors[0].shape[0] != vectors[1].shape[0]:
            raise ValueError("SDXL embeddings need two [n, dim] arrays with the same n")
        return {"clip_l": _cast(vectors[0], save_precision), "clip_g": _cast(vectors[1], save_precision)}
    if len(vectors) != 1:
        raise ValueError(f"{family} embeddings have one [n, dim] array, got {len(vectors)}")
    return {"emb_params": _cast(vectors[0], save_precision)}


def modelspec_architecture(family, prediction_type="epsilon"):
    if family == "sd1":
        base = "stable-diffusion-v1"
    elif family == "sd2":
        base = "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    elif family == "sdxl":
        base = "stable-diffusion-xl-v1-base"
    else:
        raise ValueError(f"unknown family {family!r}")
    return base + "/textual-inversion"


def modelspec_metadata(family, title, resolution, prediction_type="epsilon", clip_skip=None, date=None,
                       implementation_version=None, extra=None):
    """kohya's SAI model-spec metadata for a TI file (all values strings).

    resolution: int or (width, height); prediction_type: "epsilon" | "v_prediction"; date: datetime or ISO str.
    """
    width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
    if date is None:
        date = datetime.datetime.now()
    metadata = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": modelspec_architecture(family, prediction_type),
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION,
        "modelspec.title": str(title),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": date if isinstance(date, str) else date.isoformat(),
    }
    if implementation_version:
        metadata["modelspec.implementation_version"] = str(implementation_version)
    if clip_skip is not None:
        metadata["modelspec.encoder_layer"] = str(clip_skip)
    for key, value in (extra or {}).items():
        if value is not None:
            metadata[key if key.startswith("modelspec.") else f"modelspec.{key}"] = str(value)
    return metadata


def save_embedding_safetensors(path, family, vectors, metadata=None, save_precision="fp32"):
    """kohya layout: SD1/SD2 {"emb_params": [n, dim]}, SDXL {"clip_l", "clip_g"}; metadata from
    `modelspec_metadata`. vectors: list of [n, dim] arrays, one per text encoder. Atomic."""
    write_safetensors(path, _tensors_for(family, vectors, save_precision), metadata)


def save_embedding_pt(path, family, vectors, name, step=None, sd_checkpoint=None, sd_checkpoint_name=None,
                      save_precision="fp32"):
    """A1111 `.pt` layout for SD1/SD2 (string_to_token {"*": 265}, string_to_param {"*": t}, name, step,
    sd_checkpoint, sd_checkpoint_name); for SDXL the {"clip_l", "clip_g"} dict kohya writes. Written without
    torch; loads with torch.load(weights_only=True). Atomic."""
    tensors = _tensors_for(family, vectors, save_precision)
    if family == "sdxl":
        data = tensors
    else:
        data = {
            "string_to_token": {"*": 265},  # 265 = CLIP id of "*</w>", what A1111 writes
            "string_to_param": {"*": tensors["emb_params"]},
            "name": str(name),
            "step": None if step is None else int(step),
            "sd_checkpoint": sd_checkpoint,
            "sd_checkpoint_name": sd_checkpoint_name,
        }
    write_torch_file(path, data)


def save_embedding_diffusers(path, vectors, token, save_precision="fp32"):
    """diffusers' textual-inversion layout `{token: [n, dim]}` (`learned_embeds.bin` / `.safetensors`), which
    `load_textual_inversion` reads with the key as the token. SD1/SD2 only (SDXL files are the clip_l/clip_g
    dict). Atomic; `.bin` is written without torch."""
    if len(vectors) != 1:
        raise UserError("the diffusers layout holds one text encoder's vectors; SDXL embeddings are saved as "
                        "{clip_l, clip_g} (.safetensors or .pt), which diffusers loads once per text encoder")
    tensors = {str(token): _cast(vectors[0], save_precision)}
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension == ".safetensors":
        write_safetensors(path, tensors)
    elif extension in (".bin", ".pt"):
        write_torch_file(path, tensors)
    else:
        raise UserError(f"cannot save a diffusers embedding as {extension!r}; use .bin or .safetensors")


def save_embedding(path, family, vectors, name, metadata=None, save_precision="fp32", step=None,
                   sd_checkpoint=None, sd_checkpoint_name=None):
    """Save by extension: .safetensors (kohya layout + metadata) or .pt/.ckpt (A1111 layout)."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension == ".safetensors":
        save_embedding_safetensors(path, family, vectors, metadata, save_precision)
    elif extension in (".pt", ".ckpt"):
        save_embedding_pt(path, family, vectors, name, step, sd_checkpoint, sd_checkpoint_name, save_precision)
    else:
        raise UserError(f"--save_model_as: cannot save an embedding as {extension!r}; use safetensors, pt or ckpt")
