"""Seconds per image: text encoding (prompt + negative), `steps` sampler steps with classifier-free guidance
(scale 7.5, so the UNet runs on a batch of 2), VAE decode; batch 1, the same initial latents every call.

Ours: library.sampling.pipeline.Pipeline (what gen_img.py runs); ref: diffusers' StableDiffusionPipeline (SDXL:
StableDiffusionXLPipeline) with the scheduler that samples the same way (Euler: EulerDiscreteScheduler; DDIM: DDIMScheduler as kohya sets it).
"""
import os

import numpy as np

from . import common

PROMPT, NEGATIVE = "a photo of a cat on a chair", "blurry, low quality"
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def prepare(folder, spec_name, steps, sampler, size):
    spec = common.spec_of(spec_name)
    common.save_random_models(spec, folder, parts=("unet", "text_encoders", "vae"))
    latents = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    np.savez(os.path.join(folder, "inputs.npz"), latents=latents)


def build(side, folder, spec_name, steps, sampler, size):
    spec = common.spec_of(spec_name)
    latents = common.load_inputs(folder)["latents"]
    return (_ours if side == "ours" else _ref)(spec, folder, latents, steps, sampler, size)


def _ours(spec, folder, latents, steps, sampler, size):
    from library.sampling.pipeline import Pipeline, SamplingOptions

    pipeline = Pipeline(common.load_bundle(spec, folder))
    options = SamplingOptions(width=size, height=size, steps=steps, scale=7.5, sampler=sampler)

    def step():
        return float(pipeline([PROMPT], [NEGATIVE], [0], options, initial_latents=latents).mean())

    return step


def _ref(spec, folder, latents, steps, sampler, size):
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    models = common.load_torch_models(spec, folder, parts=("unet", "text_encoders", "vae"))
    schedulers = {"euler": lambda: EulerDiscreteScheduler(**SCHEDULE),
                  "ddim": lambda: DDIMScheduler(**SCHEDULE, steps_offset=1, clip_sample=False,
                                                set_alpha_to_one=True)}
    if sampler not in schedulers:
        raise ValueError(f"gen case: sampler {sampler!r} has no diffusers counterpart here ({', '.join(schedulers)})")
    pipe = diffusers_pipeline(spec, models, schedulers[sampler]())
    pipe.set_progress_bar_config(disable=True)
    start = torch.from_numpy(latents)

    def step():
        with torch.no_grad():
            images = pipe(prompt=[PROMPT], negative_prompt=[NEGATIVE], height=size, width=size,
                          num_inference_steps=steps, guidance_scale=7.5, latents=start.clone(),
                          output_type="np").images
        return float(np.asarray(images).mean())

    return step


def diffusers_pipeline(spec, models, scheduler):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from library.text.tokenizer import load_clip_tokenizer

    tokenizers = [load_clip_tokenizer(pad=pad) for pad in common.PADDING[spec.family]]
    if spec.family == "sdxl":
        return StableDiffusionXLPipeline(vae=models["vae"], text_encoder=models["text_encoder_0"],
                                         text_encoder_2=models["text_encoder_1"], tokenizer=tokenizers[0],
                                         tokenizer_2=tokenizers[1], unet=models["unet"], scheduler=scheduler)
    return StableDiffusionPipeline(vae=models["vae"], text_encoder=models["text_encoder_0"], tokenizer=tokenizers[0],
                                   unet=models["unet"], scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
