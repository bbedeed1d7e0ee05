"""LoRA training steps/s: ours (MindSpore graph-mode train step) vs torch + diffusers + peft, same tiny model.

    python bench/lora_train_speed.py [--config tiny-sd15] [--steps 20] [--rank 4] [--batch 2]

One full optimizer step each side: text encoder forward (frozen), DDPM noising, UNet with LoRA on the
Transformer2DModel layers (kohya's targets, rank r, alpha r), MSE loss, backward to the LoRA weights only,
gradient clipping (1.0), AdamW. Both start from the same weights (torch builds them, ours loads them by name),
the same LoRA initialisation, batch and noise. Each framework runs in its own process (so each peak RSS is its
own); the parent alternates timed steps between the two (a load change hits both) and prints medians, steps/s,
the ratio, the first-step time (our graph compile) apart, and the first-step losses as a sanity check.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def fixed_inputs(spec, batch):
    import numpy as np

    rng = np.random.default_rng(0)
    side = spec.sample_size
    ids = np.full((batch, 77), 49407, np.int64)
    ids[:, 0] = 49406
    ids[:, 1:4] = rng.integers(300, 40000, (batch, 3))
    return {"latents": rng.standard_normal((batch, 4, side, side)).astype(np.float32),
            "noise": rng.standard_normal((batch, 4, side, side)).astype(np.float32),
            "timesteps": rng.integers(0, 1000, batch), "ids": ids}


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def torch_step(spec, x, rank, folder):
    import torch
    import transformers
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import save_file

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec.unet)
    encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**spec.text_encoders[0]))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, os.path.join(folder, "unet.safetensors"))
    save_file({("" if k.startswith("text_model.") else "text_model.") + k: v.contiguous()
               for k, v in encoder.state_dict().items() if "position_ids" not in k},
              os.path.join(folder, "te.safetensors"))
    unet.requires_grad_(False)
    encoder.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGETS))
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    save_file({n: p.detach().contiguous() for n, p in lora.items()}, os.path.join(folder, "lora.safetensors"))
    optimizer = torch.optim.AdamW(list(lora.values()), lr=1e-4, weight_decay=1e-2)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    latents, noise = torch.from_numpy(x["latents"]), torch.from_numpy(x["noise"])
    timesteps, ids = torch.from_numpy(x["timesteps"]), torch.from_numpy(x["ids"])

    def step():
        with torch.no_grad():
            context = encoder(ids).last_hidden_state
        noisy = scheduler.add_noise(latents, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, context).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora.values(), 1.0)
        optimizer.step()
        return float(loss.detach())

    return step


def ours_step(spec, x, rank, folder):
    import numpy as np
    from safetensors.numpy import load_file

    from library import device
    from library.models.bundle import build_bundle
    from library.models.weights import load_state_dict
    from library.networks import LoRANetwork
    from library.training.method import DiffusionMethod
    from library.training.optimizers import build_optimizer
    from library.training.step import StepRunner
    from train_network import add_network_arguments
    from library.training import session

    device.setup()
    bundle = build_bundle(spec)
    load_state_dict(bundle.unet, load_file(os.path.join(folder, "unet.safetensors")))
    load_state_dict(bundle.text_encoders[0], load_file(os.path.join(folder, "te.safetensors")))
    args = session.build_parser("bench", True, add_network_arguments).parse_args(["--seed", "0"])
    method = DiffusionMethod(args, bundle)
    method.freeze_all()
    network = LoRANetwork(bundle.unet, [], spec.family, spec.unet, network_dim=rank, network_alpha=rank, seed=0)
    _copy_peft_init(network, load_file(os.path.join(folder, "lora.safetensors")))
    network.apply()
    method.build_objective()
    optimizer = build_optimizer("AdamW", [{"params": network.parameters(), "lr": 1e-4}], 1e-4)
    runner = StepRunner(method.objective, optimizer, 1.0, 1)
    batch = {"input_ids": [x["ids"].astype(np.int32)], "loss_weights": np.ones(len(x["ids"]), np.float32)}
    inputs = method.step_inputs(batch, x["latents"], x["noise"], x["timesteps"])

    def step():
        loss, _, _ = runner.run(0, inputs)  # returns floats: the step has finished
        return loss

    return step


def _copy_peft_init(network, peft):
    """peft's lora_A/lora_B ('...to_q.lora_A.default.weight') into our modules by diffusers path."""
    for module in network.modules:
        down = peft[f"{module.module_path}.lora_A.default.weight"]
        up = peft[f"{module.module_path}.lora_B.default.weight"]
        module.set_weights(down, up)


def worker(kind, config, rank, batch, folder):
    from library.models.configs import get_spec

    spec = get_spec(config)
    x = fixed_inputs(spec, batch)
    step = (ours_step if kind == "ours" else torch_step)(spec, x, rank, folder)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            print(f"rss {peak_rss_mib():.0f}", flush=True)
            return
        start = time.perf_counter()
        loss = step()
        print(f"time {time.perf_counter() - start:.6f} {loss:.9g}", flush=True)


class Worker:
    def __init__(self, kind, args, folder):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--config", args.config,
               "--rank", str(args.rank), "--batch", str(args.batch), "--folder", folder]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=dict(os.environ, GLOG_v="3"))
        self._answer("ready")

    def _answer(self, word):
        for line in self.proc.stdout:
            if line.startswith(word):
                return line.split()[1:]
        raise RuntimeError(f"worker exited before answering {word!r} (exit code {self.proc.wait()})")

    def step(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        seconds, loss = self._answer("time")
        return float(seconds), float(loss)

    def finish(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        rss = float(self._answer("rss")[0])
        self.proc.wait()
        return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny-sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.config, args.rank, args.batch, args.folder)
        return
    with tempfile.TemporaryDirectory() as folder:
        reference = Worker("torch", args, folder)  # writes the weights and LoRA init both use
        ours = Worker("ours", args, folder)
        first_ours, loss_ours = ours.step()
        first_torch, loss_torch = reference.step()
        times = {"ours": [], "torch": []}
        for i in range(args.steps):
            pair = [("ours", ours), ("torch", reference)]
            for kind, w in (pair if i % 2 == 0 else pair[::-1]):
                times[kind].append(w.step()[0])
        rss_ours, rss_torch = ours.finish(), reference.finish()
    t_ours, t_torch = statistics.median(times["ours"]), statistics.median(times["torch"])
    print(f"{args.config} LoRA r{args.rank} B{args.batch}, {args.steps} steps | ours {t_ours * 1e3:.1f} ms "
          f"({1 / t_ours:.2f} steps/s)  torch+peft {t_torch * 1e3:.1f} ms ({1 / t_torch:.2f} steps/s)  "
          f"ratio ours/torch {t_ours / t_torch:.2f} | first step ours {first_ours:.1f} s (compile) torch "
          f"{first_torch:.2f} s | peak RSS ours {rss_ours:.0f} MiB torch {rss_torch:.0f} MiB | first loss ours "
          f"{loss_ours:.6f} torch {loss_torch:.6f}", flush=True)


if __name__ == "__main__":
    main()
