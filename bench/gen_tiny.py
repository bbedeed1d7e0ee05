"""Seconds per image: our pipeline vs diffusers' on the same tiny SD1 / SDXL weights, same sampler and steps.

    python bench/gen_tiny.py [--steps 20] [--sampler euler] [--size 64] [--repeats 3] [--models tiny-sd15 tiny-sdxl]
                             [--torch_threads 1]

Both run on the CPU with batch 1 and CFG on; the first (compiling / warm-up) call is not timed; the figure is
the median of the timed runs. Prints one line per model with the ratio ours / diffusers.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def _time(fn, repeats):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name, steps, sampler, size, repeats):
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from library.sampling.pipeline import Pipeline, SamplingOptions
    from test_gen_img_pipeline_parity import SCHEDULERS, build_pair

    ref, bundle, ours = build_pair(name)
    latents = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    options = SamplingOptions(width=size, height=size, steps=steps, scale=7.5, sampler=sampler)
    ours_s = _time(lambda: ours(["a photo of a cat"], ["blurry"], [1], options, initial_latents=latents), repeats)

    scheduler = SCHEDULERS.get(sampler, lambda: EulerDiscreteScheduler())()
    if bundle.spec.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=ref["vae"], text_encoder=ref["encoders"][0],
                                         text_encoder_2=ref["encoders"][1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=ref["unet"], scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=ref["vae"], text_encoder=ref["encoders"][0], tokenizer=bundle.tokenizers[0],
                                       unet=ref["unet"], scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run_diffusers():
        with torch.no_grad():
            pipe(prompt=["a photo of a cat"], negative_prompt=["blurry"], height=size, width=size,
                 num_inference_steps=steps, guidance_scale=7.5, latents=torch.from_numpy(latents), output_type="np")

    ref_s = _time(run_diffusers, repeats)
    print(f"{name}: {sampler} {steps} steps {size}x{size}: ours {ours_s:.3f} s/image, diffusers {ref_s:.3f} "
          f"s/image, ratio {ours_s / ref_s:.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler", choices=["ddim", "euler"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["tiny-sd15", "tiny-sdxl"])
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch intra-op threads (on a loaded 2-core machine 1 was ~10x faster than 2)")
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from library import device

    device.setup()
    for name in args.models:
        bench_model(name, args.steps, args.sampler, args.size, args.repeats)


if __name__ == "__main__":
    main()
