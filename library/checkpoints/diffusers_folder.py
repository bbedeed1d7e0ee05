"""diffusers pipeline folders: `unet/`, `vae/`, `text_encoder/`, `text_encoder_2/` (config.json + weights),
`tokenizer/`, `tokenizer_2/`, `scheduler/`, `model_index.json`.

Any architecture the config.json files describe loads (diffusers' legacy `attention_head_dim` = number of
heads is kept as is; the UNet Cell reads it the same way).
"""
import json
import os

from ..errors import UserError
from ..models.configs import SD_VAE_SCALING, ModelSpec
from .clip_keys import with_text_model_prefix
from .pickle_files import read_pickled_state_dict
from .vae_keys import normalize_legacy_vae_names

TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                 "text_encoder": "model", "text_encoder_2": "model"}
_PICKLE_NAMES = {"diffusion_pytorch_model": "diffusion_pytorch_model.bin", "model": "pytorch_model.bin"}
# CLIPTextConfig keys our text encoder Cells use; the rest of a transformers config.json is bookkeeping.
_TEXT_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "hidden_act", "layer_norm_eps", "pad_token_id", "projection_dim")


def is_diffusers_folder(path):
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "model_index.json"))
                                    or os.path.isfile(os.path.join(path, "unet", "config.json")))


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError as e:
        raise UserError(f"{path} is missing; a diffusers folder needs it") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object")
    return value


def _model_config(path):
    """A diffusers config.json without its bookkeeping entries (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in read_json(path).items() if not k.startswith("_")}


def _text_config(path):
    raw = read_json(path)
    config = {k: raw[k] for k in _TEXT_CONFIG_KEYS if k in raw}
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in config]
    if missing:
        raise UserError(f"{path} is not a CLIP text config: missing {', '.join(missing)}")
    # The tokenizers fix BOS/EOS; old configs say 0/2 (legacy values that no SD tokenizer uses).
    config.update(bos_token_id=49406, eos_token_id=49407)
    config.setdefault("max_position_embeddings", 77)
    config.setdefault("vocab_size", 49408)
    return config


def spec_from_diffusers_folder(folder):
    """ModelSpec from a diffusers folder's config.json files (and scheduler's prediction_type)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UserError(f"model config folder {folder} does not exist")
    unet = _model_config(os.path.join(folder, "unet", "config.json"))
    vae = _model_config(os.path.join(folder, "vae", "config.json"))
    encoders = [_text_config(os.path.join(folder, name, "config.json"))
                for name in TEXT_ENCODER_FOLDERS if os.path.isdir(os.path.join(folder, name))]
    if not encoders:
        raise UserError(f"{folder} has no text_encoder/ folder; expected a diffusers Stable Diffusion folder")
    if len(encoders) == 2:
        family = "sdxl"
    elif encoders[0].get("hidden_act") == "gelu":  # OpenCLIP ViT-H (SD2); CLIP-L uses quick_gelu
        family = "sd2"
    else:
        family = "sd1"
    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    scheduler = read_json(scheduler_path) if os.path.isfile(scheduler_path) else {}
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise UserError(f"{scheduler_path}: prediction_type {prediction!r} is not supported "
                        "(expected epsilon or v_prediction)")
    return ModelSpec(name=f"diffusers:{os.path.basename(os.path.abspath(folder))}", family=family, unet=unet,
                     vae=vae, text_encoders=encoders, prediction_type=prediction,
                     vae_scaling_factor=float(vae.get("scaling_factor", SD_VAE_SCALING)),
                     resolution=int(unet.get("sample_size", 64)) * 8)


def _weights_file(component_folder, stem, allow_pickle):
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.json"):
        if os.path.isfile(os.path.join(component_folder, name)):
            return os.path.join(component_folder, name)
    pickle_path = os.path.join(component_folder, _PICKLE_NAMES[stem])
    if os.path.isfile(pickle_path):
        if not allow_pickle:
            raise UserError(f"{pickle_path} is a pickle file, which can run code when loaded; it is read only "
                            "with --allow_unsafe_pickle (only for files you trust), or convert it to "
                            f"{stem}.safetensors first")
        return pickle_path
    raise UserError(f"{component_folder} has no weights: expected {stem}.safetensors")


def _read_weights(path, allow_pickle):
    from ..formats.safetensors_io import read_safetensors

    if path.endswith(".index.json"):  # sharded: {"weight_map": {tensor name: shard file}}
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        if not shards:
            raise UserError(f"{path} has no weight_map")
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(os.path.dirname(path), shard))[0])
        return tensors
    if path.endswith(".bin"):
        return read_pickled_state_dict(path, allow_pickle)
    return read_safetensors(path)[0]


def read_component(folder, component, allow_pickle=False):
    """{diffusers/transformers name: array} of one component folder (`unet`, `vae`, `text_encoder`, ...)."""
    component_folder = os.path.join(os.fspath(folder), component)
    tensors = _read_weights(_weights_file(component_folder, _WEIGHT_STEMS[component], allow_pickle), allow_pickle)
    if component == "vae":
        return normalize_legacy_vae_names(tensors)
    if component.startswith("text_encoder"):
        return with_text_model_prefix(tensors)
    return tensors


def read_vae_folder(folder, allow_pickle=False):
    """A lone diffusers VAE folder (config.json + diffusion_pytorch_model.*)."""
    path = _weights_file(os.fspath(folder), "diffusion_pytorch_model", allow_pickle)
    return normalize_legacy_vae_names(_read_weights(path, allow_pickle))


def read_diffusers_components(folder, spec, allow_pickle=False):
    """{"unet", "vae", "text_encoders": [...]} read from a diffusers folder for `spec`."""
    return {"unet": read_component(folder, "unet", allow_pickle),
            "vae": read_component(folder, "vae", allow_pickle),
            "text_encoders": [read_component(folder, TEXT_ENCODER_FOLDERS[i], allow_pickle)
                              for i in range(len(spec.text_encoders))]}
