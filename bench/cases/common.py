"""What the cases share: the random weights (written once by a torch process, loaded by name on both sides)
and the fixed batch (token ids, latents, noise, timesteps) both sides train on.

Files in the case folder: `unet.safetensors`, `text_encoder_{i}.safetensors` (our names: `text_model.` prefix),
`vae.safetensors` when asked for, and `inputs.npz`.
"""
import os

import numpy as np

TOKEN_STRING, NUM_VECTORS = "mytoy", 2
CAPTIONS = ["a photo of mytoy on a table", "mytoy, close up", "a mytoy in the grass", "mytoy on a shelf"]
# CLIP-L pads with <|endoftext|>, OpenCLIP with "!" (library.models.bundle.TOKENIZER_PADDING, which imports
# MindSpore; the prepare process must not)
PADDING = {"sd1": ("eos",), "sd2": ("!",), "sdxl": ("eos", "!")}


def spec_of(spec_name):
    from library.models.configs import get_spec

    return get_spec(spec_name)


# ---------------------------------------------------------------------------------------------- prepare side

def save_random_models(spec, folder, parts=("unet", "text_encoders")):
    """Random torch models (seed 0) for `parts` of the spec, saved under the names our Cells use."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    models = {}
    if "unet" in parts:
        from diffusers import UNet2DConditionModel

        models["unet"] = UNet2DConditionModel(**spec.unet)
        save_file(_contiguous(models["unet"].state_dict()), os.path.join(folder, "unet.safetensors"))
    if "text_encoders" in parts:
        for index, encoder in enumerate(build_torch_encoders(spec)):
            save_file(_contiguous(ours_encoder_names(encoder.state_dict())),
                      os.path.join(folder, f"text_encoder_{index}.safetensors"))
            models[f"text_encoder_{index}"] = encoder
    if "vae" in parts:
        from diffusers import AutoencoderKL

        models["vae"] = AutoencoderKL(**spec.vae)
        save_file(_contiguous(models["vae"].state_dict()), os.path.join(folder, "vae.safetensors"))
    return models


def build_torch_encoders(spec):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders = []
    for index, config in enumerate(spec.text_encoders):
        with_projection = spec.family == "sdxl" and index == 1
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**config)))
    return encoders


def ours_encoder_names(tensors):
    """transformers 5 drops `text_model.` from CLIP state dicts; our Cells (and checkpoint files) keep it."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in tensors.items() if not k.endswith("position_ids")}


def _contiguous(state):
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_training_inputs(spec, folder, batch, latent=None, with_token=True):
    """Token ids per encoder (the TI word added as the trainer adds it), latents, noise, timesteps, time ids."""
    from library.text.chunking import make_tokenize_fn
    from library.text.token_strings import add_token_string, caption_transform
    from library.text.tokenizer import load_clip_tokenizer

    tokenizers = [load_clip_tokenizer(pad=pad) for pad in PADDING[spec.family]]
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    if with_token:
        add_token_string(tokenizers, TOKEN_STRING, NUM_VECTORS)
        hook = caption_transform(TOKEN_STRING, NUM_VECTORS)
        captions = [hook(c) for c in captions]
    else:
        captions = [c.replace(TOKEN_STRING, "toy") for c in captions]
    ids = make_tokenize_fn(tokenizers)(captions)
    side = latent or spec.sample_size
    rng = np.random.default_rng(0)
    pixels = side * 8
    arrays = {f"ids_{i}": np.asarray(x, np.int32) for i, x in enumerate(ids)}
    arrays.update(
        latents=rng.standard_normal((batch, 4, side, side)).astype(np.float32),
        noise=rng.standard_normal((batch, 4, side, side)).astype(np.float32),
        timesteps=rng.integers(0, 1000, batch).astype(np.int64),
        original_sizes_hw=np.full((batch, 2), pixels, np.int64), crop_top_lefts=np.zeros((batch, 2), np.int64),
        target_sizes_hw=np.full((batch, 2), pixels, np.int64))
    np.savez(os.path.join(folder, "inputs.npz"), **arrays)


def load_inputs(folder):
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        return {k: data[k] for k in data.files}


def token_ids(inputs):
    return [inputs[f"ids_{i}"] for i in range(len([k for k in inputs if k.startswith("ids_")]))]


def sdxl_time_ids(inputs):
    return np.concatenate([inputs["original_sizes_hw"], inputs["crop_top_lefts"], inputs["target_sizes_hw"]],
                          axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- ref side

def load_torch_models(spec, folder, parts=("unet", "text_encoders")):
    """The prepared weights in diffusers/transformers models (eval mode, frozen)."""
    import torch
    from safetensors.torch import load_file

    models = {}
    if "unet" in parts:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):  # no random init: every weight is assigned from the file
            unet = UNet2DConditionModel(**spec.unet)
        unet.load_state_dict(load_file(os.path.join(folder, "unet.safetensors")), assign=True)
        models["unet"] = unet
    if "text_encoders" in parts:
        for index, encoder in enumerate(build_torch_encoders(spec)):
            tensors = load_file(os.path.join(folder, f"text_encoder_{index}.safetensors"))
            own = set(encoder.state_dict())
            encoder.load_state_dict({k if k in own else k.removeprefix("text_model."): v for k, v in tensors.items()},
                                    strict=False)
            missing = own - {k if k in own else k.removeprefix("text_model.") for k in tensors}
            if any(not k.endswith("position_ids") for k in missing):
                raise KeyError(f"text encoder {index}: weights missing from the file: {sorted(missing)[:5]}")
            models[f"text_encoder_{index}"] = encoder
    if "vae" in parts:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(**spec.vae)
        vae.load_state_dict(load_file(os.path.join(folder, "vae.safetensors")))
        models["vae"] = vae
    for model in models.values():
        model.eval().requires_grad_(False)
    return models


def torch_encoders(models):
    return [models[k] for k in sorted(k for k in models if k.startswith("text_encoder_"))]


# ---------------------------------------------------------------------------------------------- ours side

def load_bundle(spec, folder):
    """Our ModelBundle with the prepared weights; parts without a file (the VAE when latents are given) stay
    unmaterialised, as the checkpoint loader builds them (lazy parameters)."""
    from safetensors.numpy import load_file

    from library.models.bundle import build_bundle
    from library.models.layers import lazy_parameters
    from library.models.weights import load_state_dict

    with lazy_parameters():
        bundle = build_bundle(spec)
    load_state_dict(bundle.unet, load_file(os.path.join(folder, "unet.safetensors")), source="unet.safetensors")
    for index, encoder in enumerate(bundle.text_encoders):
        name = f"text_encoder_{index}.safetensors"
        if os.path.exists(os.path.join(folder, name)):
            load_state_dict(encoder, load_file(os.path.join(folder, name)), source=name)
    if os.path.exists(os.path.join(folder, "vae.safetensors")):
        load_state_dict(bundle.vae, load_file(os.path.join(folder, "vae.safetensors")), source="vae.safetensors")
    return bundle
