"""Torch/diffusers reference models for the checkpoint tests (built from our named tiny specs).

Every parameter is filled with seeded random values (not the library initialisation, which leaves some
tensors zero or one), so "every tensor equal" checks cannot pass by accident.
"""
import json
import os

import numpy as np
import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from library.checkpoints.clip_keys import with_text_model_prefix
from library.checkpoints.layout import with_projection
from library.models.configs import get_spec


def _randomize(module, generator):
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module


def build_torch_models(spec, seed=0):
    """(unet, vae, [text encoders]) torch modules with random weights."""
    generator = torch.Generator().manual_seed(seed)
    unet = _randomize(UNet2DConditionModel(**spec.unet), generator)
    vae = _randomize(AutoencoderKL(**spec.vae), generator)
    encoders = []
    for index, config in enumerate(spec.text_encoders):
        cls = CLIPTextModelWithProjection if with_projection(spec.family, index) else CLIPTextModel
        encoders.append(_randomize(cls(CLIPTextConfig(**config)), generator))
    return unet, vae, encoders


def numpy_state(module):
    return {name: value.detach().cpu().numpy().copy() for name, value in module.state_dict().items()}


def components_of(unet, vae, encoders):
    """Our component dicts (diffusers names; text encoders `text_model.`-prefixed) from torch modules."""
    return {"unet": numpy_state(unet), "vae": numpy_state(vae),
            "text_encoders": [with_text_model_prefix(numpy_state(e)) for e in encoders]}


def _tiny_tokenizer(folder):
    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "!": 3}
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(vocab_file, merges_file)


def save_diffusers_folder(spec, unet, vae, encoders, folder):
    """save_pretrained a whole pipeline (tiny tokenizer) so `from_single_file(config=folder)` can use it."""
    tokenizer = _tiny_tokenizer(os.path.join(folder, "_tok"))
    scheduler = EulerDiscreteScheduler(prediction_type=spec.prediction_type)
    if spec.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                         scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def load_with_diffusers(spec, path, folder):
    cls = StableDiffusionXLPipeline if spec.family == "sdxl" else StableDiffusionPipeline
    return cls.from_single_file(path, config=folder, local_files_only=True)


def pipeline_modules(spec, pipe):
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if spec.family == "sdxl" else [])
    return pipe.unet, pipe.vae, encoders


def test_reference_models_follow_the_spec():
    spec = get_spec("tiny-sdxl")
    unet, vae, encoders = build_torch_models(spec)
    assert unet.config.cross_attention_dim == spec.unet["cross_attention_dim"]
    assert isinstance(encoders[1], CLIPTextModelWithProjection) and isinstance(encoders[0], CLIPTextModel)
    state = numpy_state(unet)
    assert all(np.any(v != 0) for k, v in state.items() if v.size > 1), "every tensor must be random"


def shape_only_components(spec):
    """Components of a full-size spec without memory: torch builds on the meta device, every array is a
    zero-strided view. Text-encoder q/k/v are left out (fusing them would allocate; shapes do not need them)."""
    with torch.device("meta"):
        unet, vae, encoders = (UNet2DConditionModel(**spec.unet), AutoencoderKL(**spec.vae),
                               [(CLIPTextModelWithProjection if with_projection(spec.family, i) else CLIPTextModel)(
                                   CLIPTextConfig(**c)) for i, c in enumerate(spec.text_encoders)])

    def shapes(module):
        return {n: np.broadcast_to(np.float16(0), tuple(v.shape)) for n, v in module.state_dict().items()}

    def text(module):
        return {n: v for n, v in with_text_model_prefix(shapes(module)).items()
                if not n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                   "q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    return {"unet": shapes(unet), "vae": shapes(vae), "text_encoders": [text(e) for e in encoders]}
