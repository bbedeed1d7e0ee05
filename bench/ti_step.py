"""Textual-inversion train step on tiny SD1: ours (compiled MindSpore step) vs a torch/diffusers reference loop.

Same weights, token ids, latents, noise and timesteps; interleaved repetitions, medians, ratio ours/torch.
Run: python bench/ti_step.py [--repeats 20] [--spec tiny-sd15]
"""
import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--torch_threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from library import device

    device.setup()
    torch.set_num_threads(args.torch_threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_train_textual_inversion import make_method, fixed_batch
    from library.training.optimizers import build_optimizer
    from library.training.step import StepRunner
    from library.models.weights import state_dict
    from diffusers import UNet2DConditionModel, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    _, bundle, method = make_method("tiny-sd15")
    batch, latents, noise, timesteps = fixed_batch(bundle)
    inputs = method.step_inputs(batch, latents, noise, timesteps)
    runner = StepRunner(method.objective, build_optimizer("AdamW", method.param_groups(1e-3), 1e-3), 1.0, 1)
    start = time.perf_counter()
    runner.run(0, inputs)
    compile_s = time.perf_counter() - start

    spec = bundle.spec
    unet = UNet2DConditionModel(**spec.unet)
    unet.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(bundle.unet).items()})
    unet.requires_grad_(False)
    te = CLIPTextModel(CLIPTextConfig(**spec.text_encoders[0]))
    te.load_state_dict({k.removeprefix("text_model."): torch.from_numpy(v)
                        for k, v in state_dict(bundle.text_encoders[0]).items() if "new_rows" not in k})
    te.requires_grad_(False)
    base = te.get_input_embeddings().weight.detach()
    rows = torch.nn.Parameter(torch.from_numpy(bundle.text_encoders[0].new_token_rows()))
    optimizer = torch.optim.AdamW([rows], lr=1e-3)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ids = torch.from_numpy(batch["input_ids"][0].astype(np.int64))
    t = torch.from_numpy(timesteps)
    lat, noi = torch.from_numpy(latents), torch.from_numpy(noise)

    class NewRowsEmbedding(torch.nn.Module):
        """The same "train only the new rows" lookup as ours."""

        def forward(self, token_ids):
            return torch.nn.functional.embedding(token_ids, torch.cat([base, rows], 0))

    te.embeddings.token_embedding = NewRowsEmbedding()

    def torch_step():
        context = te(ids).last_hidden_state
        pred = unet(sched.add_noise(lat, noi, t), t, context).sample
        loss = ((pred - noi) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    torch_step()
    ours, ref = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        runner.run(0, inputs)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch_step()
        ref.append(time.perf_counter() - start)
    o, r = statistics.median(ours), statistics.median(ref)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ti_step_tiny_sd1: ours {o * 1000:.1f} ms  torch {r * 1000:.1f} ms  ratio {o / r:.2f}  "
          f"first step (compile) {compile_s:.1f} s  process peak RSS {peak_mb:.0f} MB (both frameworks)")


if __name__ == "__main__":
    main()
