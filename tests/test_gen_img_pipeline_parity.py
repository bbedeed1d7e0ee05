"""Our text-to-image pipeline vs diffusers' StableDiffusion(XL)Pipeline on tiny models with the same weights.

Same initial latents, same prompts; DDIM and Euler; images compared in [0, 1] within 1e-3.
"""
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.models.bundle import build_bundle
from library.models.configs import get_spec
from library.models.weights import load_state_dict
from library.sampling.pipeline import Pipeline, SamplingOptions

SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(**SCHEDULE, steps_offset=1, clip_sample=False, set_alpha_to_one=True),
    "euler": lambda: EulerDiscreteScheduler(**SCHEDULE),
}
PROMPTS = ["a photo of a red cat on a chair", "a blue house"]  # no weighting syntax: diffusers has none
NEGATIVES = ["blurry", "low quality, bad"]


def torch_state(module):
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()
            if "Conv2d_0" not in k and not k.endswith("position_ids")}


def transformers_names(tensors):
    """transformers 5 drops the `text_model.` prefix from CLIP state dicts; the checkpoint names keep it."""
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in tensors.items()}


def jitter_norms(module):
    """Non-default norm affines, so a swapped weight/bias would show."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def build_pair(spec_name):
    """(diffusers components, our bundle with the same weights)."""
    spec = get_spec(spec_name)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec.unet).eval()
    vae = AutoencoderKL(**spec.vae).eval()
    encoders = []
    for i, config in enumerate(spec.text_encoders):
        cls = CLIPTextModelWithProjection if spec.family == "sdxl" and i == 1 else CLIPTextModel
        encoders.append(cls(CLIPTextConfig(**config)).eval())
    for module in [unet, vae] + encoders:
        jitter_norms(module)
    bundle = build_bundle(spec)
    load_state_dict(bundle.unet, torch_state(unet))
    load_state_dict(bundle.vae, torch_state(vae))
    for ours, ref in zip(bundle.text_encoders, encoders):
        load_state_dict(ours, transformers_names(torch_state(ref)))
    return dict(unet=unet, vae=vae, encoders=encoders), bundle, Pipeline(bundle)  # compiled once per module


@pytest.fixture(scope="module")
def sd1():
    return build_pair("tiny-sd15")


@pytest.fixture(scope="module")
def sdxl():
    return build_pair("tiny-sdxl")


def initial_latents(batch, size=64):
    return np.random.default_rng(3).standard_normal((batch, 4, size // 8, size // 8)).astype(np.float32)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_sd1_pipeline_matches_diffusers(sd1, sampler):
    ref, bundle, pipeline = sd1
    pipe = StableDiffusionPipeline(vae=ref["vae"], text_encoder=ref["encoders"][0], tokenizer=bundle.tokenizers[0],
                                   unet=ref["unet"], scheduler=SCHEDULERS[sampler](), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_latents(2)
    with torch.no_grad():
        expected = pipe(prompt=PROMPTS, negative_prompt=NEGATIVES, height=64, width=64, num_inference_steps=3,
                        guidance_scale=7.5, latents=torch.from_numpy(latents), output_type="np").images
    options = SamplingOptions(width=64, height=64, steps=3, scale=7.5, sampler=sampler)
    ours = pipeline(PROMPTS, NEGATIVES, [1, 2], options, initial_latents=latents)
    assert ours.shape == expected.shape == (2, 64, 64, 3)
    assert np.abs(ours - expected).max() <= 1e-3
    assert np.abs(ours[0] - ours[1]).max() > 1e-2  # the prompts make a difference


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_sdxl_pipeline_matches_diffusers(sdxl, sampler):
    ref, bundle, pipeline = sdxl
    pipe = StableDiffusionXLPipeline(vae=ref["vae"], text_encoder=ref["encoders"][0],
                                     text_encoder_2=ref["encoders"][1], tokenizer=bundle.tokenizers[0],
                                     tokenizer_2=bundle.tokenizers[1], unet=ref["unet"],
                                     scheduler=SCHEDULERS[sampler](), force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    latents = initial_latents(2)
    # Prompt 1 has a negative prompt, prompt 2 none (diffusers: negative_prompt None -> zeros; ours: "").
    with torch.no_grad():
        expected_neg = pipe(prompt=PROMPTS, negative_prompt=NEGATIVES, height=64, width=64, num_inference_steps=3,
                            guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np",
                            original_size=(96, 80), crops_coords_top_left=(8, 4)).images
        expected_zero = pipe(prompt=PROMPTS, height=64, width=64, num_inference_steps=3, guidance_scale=5.0,
                             latents=torch.from_numpy(latents), output_type="np",
                             original_size=(96, 80), crops_coords_top_left=(8, 4)).images
    options = SamplingOptions(width=64, height=64, steps=3, scale=5.0, sampler=sampler, original_size=(96, 80),
                              crop_top_left=(8, 4))
    ours_neg = pipeline(PROMPTS, NEGATIVES, [1, 2], options, initial_latents=latents)
    ours_zero = pipeline(PROMPTS, ["", ""], [1, 2], options, initial_latents=latents)
    assert np.abs(ours_neg - expected_neg).max() <= 1e-3
    assert np.abs(ours_zero - expected_zero).max() <= 1e-3
    assert np.abs(ours_neg - ours_zero).max() > 1e-3
