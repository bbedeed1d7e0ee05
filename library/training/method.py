"""What both training methods share: freezing the base model, the diffusion objective, step inputs, metadata.

A method (textual inversion, LoRA) adds the trainable parameters, their groups and how they are saved.
"""
import os

import numpy as np
from mindspore import Tensor

from ..diffusion.schedule import make_schedule
from ..diffusion.training import DiffusionTargets, LossOptions
from ..models.precision import apply_mixed_precision_to_models
from ..models.text_conditioning import TextConditioner
from ..text.chunking import tokenize_weighted_captions
from .loss_scale import DynamicLossScale
from .masks import loss_mask
from .objective import DiffusionObjective


def diffusion_targets(args, v_prediction):
    """The noising, target and loss Cell a run's options ask for (loss type, SNR weights, zero terminal SNR)."""
    # kohya: the noise is added with the zero-terminal-SNR schedule, the SNR weights keep the original one
    return DiffusionTargets(make_schedule(zero_terminal_snr=bool(getattr(args, "zero_terminal_snr", False))),
                            v_prediction=v_prediction, options=LossOptions.from_args(args),
                            snr_schedule=make_schedule())


class DiffusionMethod:
    trainable = {}
    loss_scale = None

    def __init__(self, args, bundle):
        self.args = args
        self.bundle = bundle
        self.spec = bundle.spec
        self.sdxl = self.spec.family == "sdxl"
        self.v_prediction = self.spec.prediction_type == "v_prediction"
        if args.mixed_precision == "fp16":
            # fp16 gradients of small values underflow: dynamic loss scaling (Ascend/GPU only: the CPU stays fp32)
            self.loss_scale = DynamicLossScale()

    def freeze_all(self):
        for cell in [self.bundle.unet, self.bundle.vae] + list(self.bundle.text_encoders):
            for p in cell.get_parameters():
                p.requires_grad = False

    def build_objective(self):
        args = self.args
        num_chunks = {None: 1, 75: 1, 150: 2, 225: 3}.get(args.max_token_length, 1)
        conditioner = TextConditioner(self.bundle.text_encoders, self.spec.family, args.clip_skip, num_chunks)
        targets = diffusion_targets(args, self.v_prediction)
        self.num_chunks = num_chunks
        self.weighted_captions = bool(getattr(args, "weighted_captions", False))
        self.objective = DiffusionObjective(self.bundle.unet, conditioner, targets, self.sdxl,
                                            weighted_captions=self.weighted_captions)
        # kohya's weight_dtype: the frozen UNet and text encoders compute in fp16/bf16 (norms, softmax and the
        # loss in fp32); parameters stay fp32 masters, so trained rows / LoRA weights update in fp32. The VAE
        # only encodes latents outside the step and stays fp32.
        self.compute_dtype = apply_mixed_precision_to_models(self.bundle, args.mixed_precision)
        if args.gradient_checkpointing:
            self.bundle.unet.enable_gradient_checkpointing()
            for encoder in self.bundle.text_encoders:
                encoder.enable_gradient_checkpointing()

    def param_groups(self, lr):
        return [{"params": list(self.trainable.values()), "lr": lr}]

    def set_loss_mask(self, enabled):
        """Masked loss on or off (the loop decides from the options and the datasets, before the first step)."""
        self.objective.targets.set_masked(enabled)

    def step_inputs(self, batch, latents, noise, timesteps, input_noise=None):
        """The objective's inputs for one batch (see objective.py); `input_noise` with --ip_noise_gamma."""
        ids, caption_weights = batch["input_ids"], None
        if self.weighted_captions:  # kohya re-tokenizes the final captions, reading their (word:1.2) weights
            ids, caption_weights = tokenize_weighted_captions(self.bundle.tokenizers, batch["captions"],
                                                              self.num_chunks)
        ids1 = Tensor(np.asarray(ids[0], np.int32))
        ids2 = Tensor(np.asarray(ids[1], np.int32)) if self.sdxl else ids1
        b = latents.shape[0]
        if self.sdxl:
            time_ids = np.concatenate([np.asarray(batch["original_sizes_hw"]), np.asarray(batch["crop_top_lefts"]),
                                       np.asarray(batch["target_sizes_hw"])], axis=1).astype(np.float32)
        else:
            time_ids = np.zeros((b, 6), np.float32)
        weights = np.asarray(batch["loss_weights"], np.float32)
        inputs = (Tensor(latents), Tensor(noise), Tensor(np.asarray(timesteps).astype(np.int32)), Tensor(weights),
                  ids1, ids2, Tensor(time_ids))
        extras = self.objective.extra_inputs
        if "caption_weights" in extras:
            inputs += (Tensor(np.asarray(caption_weights, np.float32)),)
        if "input_noise" in extras:
            inputs += (Tensor(noise if input_noise is None else input_noise),)
        if "mask" in extras:
            mask = loss_mask(batch, latents.shape)
            inputs += (Tensor(np.ones(latents.shape, np.float32) if mask is None else mask),)
        return inputs

    def checkpoint_stem(self):
        path = self.args.pretrained_model_name_or_path or ""
        return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
