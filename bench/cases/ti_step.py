"""Textual inversion: one optimizer step (text encoder(s) -> noising -> UNet -> MSE -> backward to the new token
rows -> clip 1.0 -> AdamW), the same fixed batch every call.

Ours: the trainer's own objects (TextualInversion with `--weights` for the initial rows, build_optimizer,
StepRunner) on our bundle with the prepared weights. Ref: transformers + diffusers in a plain torch loop whose
token lookup is ours: base table for ids < vocab size, a small trainable row table for the new ids.
"""
import os

import numpy as np

from . import common

LEARNING_RATE = 1e-3


def prepare(folder, spec_name, batch, latent=None):
    from safetensors.numpy import save_file

    spec = common.spec_of(spec_name)
    models = common.save_random_models(spec, folder)
    common.save_training_inputs(spec, folder, batch, latent, with_token=True)
    # initial vectors: existing word rows (realistic magnitudes), as --init_word would give
    keys = ["clip_l", "clip_g"] if spec.family == "sdxl" else ["emb_params"]
    rows = {}
    for key, encoder in zip(keys, common.torch_encoders(models)):
        table = encoder.get_input_embeddings().weight.detach().numpy()
        rows[key] = np.ascontiguousarray(table[1000:1000 + common.NUM_VECTORS], np.float32)
    save_file(rows, os.path.join(folder, "embedding.safetensors"))


def build(side, folder, spec_name, batch, latent=None):
    spec = common.spec_of(spec_name)
    inputs = common.load_inputs(folder)
    return (_ours if side == "ours" else _ref)(spec, folder, inputs)


# ---------------------------------------------------------------------------------------------- ours

def _ours(spec, folder, inputs):
    import train_textual_inversion as cli
    from library.text.token_strings import add_token_string
    from library.training import session
    from library.training.optimizers import build_optimizer, parse_optimizer_args
    from library.training.step import StepRunner
    from library.training.textual_inversion import TextualInversion

    args = session.build_parser("bench", False, cli.add_textual_inversion_arguments).parse_args([
        "--token_string", common.TOKEN_STRING, "--num_vectors_per_token", str(common.NUM_VECTORS),
        "--weights", os.path.join(folder, "embedding.safetensors"), "--optimizer_type", "AdamW",
        "--learning_rate", str(LEARNING_RATE), "--seed", "0"])
    bundle = common.load_bundle(spec, folder)
    token_ids = add_token_string(bundle.tokenizers, args.token_string, args.num_vectors_per_token)
    method = TextualInversion(args, bundle, token_ids)
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


# ---------------------------------------------------------------------------------------------- ref

def _ref(spec, folder, inputs):
    import torch
    from safetensors.torch import load_file

    from .torch_refs import NewRowsEmbedding, ddpm_noiser, sd1_text_encode, sdxl_text_encode

    models = common.load_torch_models(spec, folder)
    encoders, unet = common.torch_encoders(models), models["unet"]
    initial = load_file(os.path.join(folder, "embedding.safetensors"))
    keys = ["clip_l", "clip_g"] if spec.family == "sdxl" else ["emb_params"]
    rows = [torch.nn.Parameter(initial[k].clone()) for k in keys]
    for encoder, new_rows in zip(encoders, rows):
        encoder.set_input_embeddings(NewRowsEmbedding(encoder.get_input_embeddings().weight, new_rows))
    optimizer = torch.optim.AdamW(rows, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    encode = sdxl_text_encode if spec.family == "sdxl" else sd1_text_encode
    ids = [torch.from_numpy(x.astype(np.int64)) for x in common.token_ids(inputs)]
    latents, noise = torch.from_numpy(inputs["latents"]), torch.from_numpy(inputs["noise"])
    timesteps = torch.from_numpy(inputs["timesteps"])
    time_ids = torch.from_numpy(common.sdxl_time_ids(inputs))
    add_noise = ddpm_noiser()

    def step():
        noisy = add_noise(latents, noise, timesteps)
        context, pooled = encode(encoders, ids)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}} if pooled is not None else {}
        prediction = unet(noisy, timesteps, context, **extra).sample
        loss = ((prediction - noise) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rows, 1.0)
        optimizer.step()
        return loss.item()

    return step
