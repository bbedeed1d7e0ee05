"""UNet forward + backward time: ours (MindSpore GRAPH_MODE, a Cell wrapping value_and_grad) vs diffusers (torch).

    python bench/unet_fwd_bwd.py [--configs tiny-sd15 tiny-sdxl sd15] [--repeats 5] [--latent N] [--checkpointing]

The gradient is taken w.r.t. the encoder hidden states (as in textual inversion: a small trainable input; no
parameter gradients), loss = mean(prediction^2), batch 1. Each framework runs in its own worker process so
each peak RSS is its own; the parent alternates single timed calls between the two workers (interleaved
repetitions, so a load change on the machine hits both; the idle worker is stopped with SIGSTOP, since an
idle MindSpore process's spinning threads made torch up to 30x slower) and prints medians and the ratio ours / torch. The
first call (our graph compile, torch warm-up) is reported apart and not in the median. Both use the same
random weights (torch builds them, ours loads them by name) and the same inputs; the losses are compared as a
sanity check. Full-size configs default to 64x64 latents, tiny ones to their spec's sample size.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_inputs(spec, latent):
    import numpy as np

    rng = np.random.default_rng(0)
    found = {"sample": rng.standard_normal((1, 4, latent, latent)).astype(np.float32),
             "timesteps": np.array([500.0], np.float32),
             "context": rng.standard_normal((1, 77, spec.context_dim)).astype(np.float32)}
    if spec.is_sdxl:
        found["text_embeds"] = rng.standard_normal((1, spec.text_encoders[1]["projection_dim"])).astype(np.float32)
        side = latent * 8
        found["time_ids"] = np.array([[side, side, 0, 0, side, side]], np.float32)
    return found


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def torch_step_fn(spec, x, weights_path, checkpointing):
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = UNet2DConditionModel(**spec.unet).eval().requires_grad_(False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights_path)
    if checkpointing:
        model.enable_gradient_checkpointing()
    extra = {}
    if "time_ids" in x:
        extra["added_cond_kwargs"] = {"text_embeds": torch.tensor(x["text_embeds"]),
                                      "time_ids": torch.tensor(x["time_ids"])}
    sample, timesteps = torch.tensor(x["sample"]), torch.tensor(x["timesteps"])

    def step():
        context = torch.tensor(x["context"], requires_grad=True)
        loss = model(sample, timesteps, context, **extra).sample.pow(2).mean()
        loss.backward()
        return float(loss.detach()), context.grad

    return step


def ours_step_fn(spec, x, weights_path, checkpointing):
    import numpy as np
    import mindspore as ms
    from mindspore import nn
    from safetensors.numpy import load_file

    from library import device
    from library.models.layers import lazy_parameters
    from library.models.unet import UNet2DConditionModel
    from library.models.weights import load_state_dict

    device.setup()
    with lazy_parameters():
        unet = UNet2DConditionModel(spec.unet)
    load_state_dict(unet, load_file(weights_path), source=weights_path)
    if checkpointing:
        unet.enable_gradient_checkpointing()

    class Loss(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def construct(self, sample, timesteps, context, text_embeds, time_ids):
            return (self.model(sample, timesteps, context, text_embeds, time_ids) ** 2).mean()

    class LossAndContextGrad(nn.Cell):
        def __init__(self, loss):
            super().__init__()
            self.value_and_grad = ms.value_and_grad(loss, grad_position=2)

        # explicit arguments: *args in a graph-mode construct broke the conv layer's custom bprop
        def construct(self, sample, timesteps, context, text_embeds, time_ids):
            return self.value_and_grad(sample, timesteps, context, text_embeds, time_ids)

    step_cell = LossAndContextGrad(Loss(unet))
    args = [ms.Tensor(x["sample"]), ms.Tensor(x["timesteps"]), ms.Tensor(x["context"])]
    if "time_ids" in x:
        args += [ms.Tensor(x["text_embeds"]), ms.Tensor(x["time_ids"])]
    else:  # unused by SD1/SD2 UNets
        args += [ms.Tensor(np.zeros((1, 1), np.float32)), ms.Tensor(np.zeros((1, 6), np.float32))]

    def step():
        loss, grad = step_cell(*args)
        return float(loss.asnumpy()), grad.asnumpy()  # asnumpy: wait for the result

    return step


def worker(kind, config, latent, weights_path, checkpointing):
    """Reads commands on stdin ('run' / 'quit'), answers one line each on stdout."""
    from library.models.configs import get_spec

    spec = get_spec(config)
    x = make_inputs(spec, latent)
    if kind == "ours":
        step = ours_step_fn(spec, x, weights_path, checkpointing)
    else:
        step = torch_step_fn(spec, x, weights_path, checkpointing)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            print(f"rss {peak_rss_mib():.0f}", flush=True)
            return
        start = time.perf_counter()
        loss, _ = step()
        print(f"time {time.perf_counter() - start:.6f} {loss:.9g}", flush=True)


class Worker:
    def __init__(self, kind, config, latent, weights_path, checkpointing):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--configs", config,
               "--latent", str(latent), "--weights", weights_path]
        cmd += ["--checkpointing"] if checkpointing else []
        env = dict(os.environ, GLOG_v="3")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self._expect("ready")

    def _expect(self, word):
        for line in self.proc.stdout:
            if line.startswith(word):
                return line.split()[1:]
        raise RuntimeError(f"worker exited before answering {word!r} (exit code {self.proc.wait()})")

    def pause(self):
        # An idle MindSpore process keeps runtime threads spinning; stopped, it cannot slow the other one.
        os.kill(self.proc.pid, signal.SIGSTOP)

    def run(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        seconds, loss = self._expect("time")
        self.pause()
        return float(seconds), float(loss)

    def finish(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        rss = float(self._expect("rss")[0])
        self.proc.wait()
        return rss


def bench(config, latent, repeats, checkpointing):
    from library.models.configs import get_spec

    spec = get_spec(config)
    latent = latent or (spec.sample_size if config.startswith("tiny") else 64)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "unet.safetensors")
        torch_worker = Worker("torch", config, latent, weights, checkpointing)  # writes the weights both use
        torch_worker.pause()
        ours_worker = Worker("ours", config, latent, weights, checkpointing)
        ours_worker.pause()
        first_ours, loss_ours = ours_worker.run()
        first_torch, loss_torch = torch_worker.run()
        times = {"ours": [], "torch": []}
        for rep in range(repeats):
            order = [("ours", ours_worker), ("torch", torch_worker)]
            for kind, w in (order if rep % 2 == 0 else order[::-1]):
                times[kind].append(w.run()[0])
        rss_ours, rss_torch = ours_worker.finish(), torch_worker.finish()
    ours, ref = statistics.median(times["ours"]), statistics.median(times["torch"])
    loss_rel = abs(loss_ours - loss_torch) / abs(loss_torch)
    mode = " ckpt" if checkpointing else ""
    print(f"{config:10s}{mode} latent {latent}x{latent} B1 | ours {ours * 1e3:9.1f} ms  torch {ref * 1e3:9.1f} ms  "
          f"ratio {ours / ref:5.2f} | first call ours {first_ours:6.1f} s torch {first_torch:5.2f} s | "
          f"peak RSS ours {rss_ours:6.0f} MiB torch {rss_torch:6.0f} MiB | loss rel diff {loss_rel:.1e}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny-sd15", "tiny-sdxl", "sd15"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latent", type=int, default=0, help="latent side (0: spec's for tiny, 64 for full)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing in both (the full UNet's activations need >10 GB otherwise)")
    parser.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.configs[0], args.latent, args.weights, args.checkpointing)
        return
    for config in args.configs:
        bench(config, args.latent, args.repeats, args.checkpointing)


if __name__ == "__main__":
    main()
