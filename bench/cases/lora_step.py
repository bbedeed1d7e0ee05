"""LoRA: one optimizer step (frozen text encoder -> noising -> UNet with LoRA -> MSE -> backward to the LoRA
weights only -> clip 1.0 -> AdamW), the same fixed batch every call.

LoRA on the UNet's Transformer2DModel layers (kohya's default targets), rank r, alpha r. The prepare side adds
peft's adapter and saves its initial values; both sides start from them. Ours: LoRATraining (the trainer's
method, `--network_train_unet_only`), build_optimizer, StepRunner. Ref: diffusers + peft in a torch loop.
"""
import os

import numpy as np

from . import common

LEARNING_RATE = 1e-4
# kohya's UNet targets are every Linear / 1x1 Conv inside Transformer2DModel: in diffusers' names
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def prepare(folder, spec_name, batch, rank, latent=None):
    from safetensors.torch import save_file

    spec = common.spec_of(spec_name)
    models = common.save_random_models(spec, folder)
    common.save_training_inputs(spec, folder, batch, latent, with_token=False)
    unet = add_peft_lora(models["unet"], rank)
    save_file({n: p.detach().contiguous() for n, p in unet.named_parameters() if "lora_" in n},
              os.path.join(folder, "lora_init.safetensors"))


def add_peft_lora(unet, rank):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGETS))
    return unet


def build(side, folder, spec_name, batch, rank, latent=None):
    spec = common.spec_of(spec_name)
    inputs = common.load_inputs(folder)
    return (_ours if side == "ours" else _ref)(spec, folder, inputs, rank)


# ---------------------------------------------------------------------------------------------- ours

def _ours(spec, folder, inputs, rank):
    from safetensors.numpy import load_file

    import train_network as cli
    from library.networks.training import LoRATraining
    from library.training import session
    from library.training.optimizers import build_optimizer, parse_optimizer_args
    from library.training.step import StepRunner

    args = session.build_parser("bench", True, cli.add_network_arguments).parse_args([
        "--network_module", "networks.lora", "--network_dim", str(rank), "--network_alpha", str(rank),
        "--network_train_unet_only", "--optimizer_type", "AdamW", "--learning_rate", str(LEARNING_RATE),
        "--seed", "0"])
    cli.check_network_options(args)
    bundle = common.load_bundle(spec, folder)
    method = LoRATraining(args, bundle)
    copy_peft_init(method.network, load_file(os.path.join(folder, "lora_init.safetensors")))
    groups = method.param_groups(args.learning_rate)
    optimizer = build_optimizer(args.optimizer_type, groups, args.learning_rate,
                                parse_optimizer_args(args.optimizer_args))
    runner = StepRunner(method.objective, optimizer, args.max_grad_norm, args.gradient_accumulation_steps, 1,
                        method.loss_scale)
    batch = {"input_ids": common.token_ids(inputs), "loss_weights": np.ones(len(inputs["latents"]), np.float32),
             "original_sizes_hw": inputs["original_sizes_hw"], "crop_top_lefts": inputs["crop_top_lefts"],
             "target_sizes_hw": inputs["target_sizes_hw"]}
    step_inputs = method.step_inputs(batch, inputs["latents"], inputs["noise"], inputs["timesteps"])

    def step():
        loss, _, _ = runner.run(0, step_inputs)
        return loss

    return step


def copy_peft_init(network, peft):
    """peft's `<path>.lora_A.default.weight` / `lora_B` into our modules (same diffusers module paths)."""
    if len(network.modules) * 2 != len(peft):
        raise ValueError(f"LoRA targets differ: ours has {len(network.modules)} modules, peft "
                         f"{len(peft) // 2}")
    for module in network.modules:
        module.set_weights(peft[f"{module.module_path}.lora_A.default.weight"],
                           peft[f"{module.module_path}.lora_B.default.weight"])


# ---------------------------------------------------------------------------------------------- ref

def _ref(spec, folder, inputs, rank):
    import torch
    from safetensors.torch import load_file

    from .torch_refs import ddpm_noiser, sd1_text_encode, sdxl_text_encode

    models = common.load_torch_models(spec, folder)
    encoders = common.torch_encoders(models)
    unet = add_peft_lora(models["unet"], rank)
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    initial = load_file(os.path.join(folder, "lora_init.safetensors"))
    with torch.no_grad():
        for name, param in lora.items():
            param.copy_(initial[name])
            param.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(lora.values()), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=1e-2)
    encode = sdxl_text_encode if spec.family == "sdxl" else sd1_text_encode
    ids = [torch.from_numpy(x.astype(np.int64)) for x in common.token_ids(inputs)]
    latents, noise = torch.from_numpy(inputs["latents"]), torch.from_numpy(inputs["noise"])
    timesteps = torch.from_numpy(inputs["timesteps"])
    time_ids = torch.from_numpy(common.sdxl_time_ids(inputs))
    add_noise = ddpm_noiser()

    def step():
        with torch.no_grad():
            context, pooled = encode(encoders, ids)
        noisy = add_noise(latents, noise, timesteps)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}} if pooled is not None else {}
        loss = ((unet(noisy, timesteps, context, **extra).sample - noise) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lora.values()), 1.0)
        optimizer.step()
        return loss.item()

    return step
