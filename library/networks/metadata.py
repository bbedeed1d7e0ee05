"""The `ss_*` training metadata kohya's train_network writes into a LoRA file (reference section 5.7).

Everything is gathered once at the start of training (`TrainingMetadata.__init__`), and each save adds what
changes (steps, epoch, finish time) and the modelspec.* keys. Keys that have no meaning here (fp8) are left
out. The dataset keys come from library/data/metadata.py.
"""
import json
import os
import random
import time

from ..data.metadata import training_metadata
from ..formats.lora import base_model_version, checkpoint_hashes, lora_metadata
from ..training.model_spec import model_spec_metadata
from .network_args import network_args_as_written

NETWORK_MODULE = "networks.lora"


class TrainingMetadata:
    """Collects kohya's ss_* values for one training run."""

    def __init__(self, args, spec, network, group, steps_per_epoch, total_steps, validation_group=None):
        self.args = args
        self.spec = spec
        a = args
        model_path = a.pretrained_model_name_or_path or ""
        model_hash, new_model_hash = checkpoint_hashes(model_path)
        vae_hash, new_vae_hash = checkpoint_hashes(a.vae) if a.vae else (None, None)
        text_encoder_lr = a.text_encoder_lr[0] if isinstance(a.text_encoder_lr, list) and a.text_encoder_lr \
            else a.text_encoder_lr
        v_prediction = spec.prediction_type == "v_prediction"
        self.values = {
            "session_id": random.randint(0, 2 ** 32), "training_started_at": time.time(),
            "output_name": a.output_name, "learning_rate": a.learning_rate, "text_encoder_lr": text_encoder_lr,
            "unet_lr": a.unet_lr, "num_batches_per_epoch": steps_per_epoch,
            "num_epochs": -(-total_steps // max(1, steps_per_epoch)), "max_train_steps": total_steps,
            "lr_warmup_steps": a.lr_warmup_steps, "lr_scheduler": a.lr_scheduler,
            "network_module": NETWORK_MODULE, "network_dim": network.network_dim,
            "network_alpha": network.network_alpha, "network_dropout": a.network_dropout,
            "mixed_precision": a.mixed_precision, "full_fp16": False, "v2": spec.family == "sd2",
            "base_model_version": base_model_version(spec.family, v_prediction),
            "v_parameterization": v_prediction, "clip_skip": a.clip_skip, "max_token_length": a.max_token_length,
            "seed": a.seed, "noise_offset": a.noise_offset, "noise_offset_random_strength":
                a.noise_offset_random_strength, "min_snr_gamma": a.min_snr_gamma,
            "zero_terminal_snr": a.zero_terminal_snr, "prior_loss_weight": a.prior_loss_weight,
            # kohya's loss/noise keys, its values as given (None when off)
            "multires_noise_iterations": a.multires_noise_iterations,
            "multires_noise_discount": a.multires_noise_discount, "adaptive_noise_scale": a.adaptive_noise_scale,
            "ip_noise_gamma": a.ip_noise_gamma, "ip_noise_gamma_random_strength": a.ip_noise_gamma_random_strength,
            "debiased_estimation": bool(a.debiased_estimation_loss), "loss_type": a.loss_type,
            "huber_schedule": a.huber_schedule, "huber_scale": a.huber_scale, "huber_c": a.huber_c,
            "optimizer": f"{a.optimizer_type}({' '.join(a.optimizer_args or [])})",
            "max_grad_norm": a.max_grad_norm, "gradient_checkpointing": a.gradient_checkpointing,
            "gradient_accumulation_steps": a.gradient_accumulation_steps, "cache_latents": a.cache_latents,
            "caption_dropout_rate": a.caption_dropout_rate,
            "caption_dropout_every_n_epochs": a.caption_dropout_every_n_epochs,
            "caption_tag_dropout_rate": a.caption_tag_dropout_rate,
            "face_crop_aug_range": a.face_crop_aug_range, "scale_weight_norms": a.scale_weight_norms,
            "training_comment": a.training_comment, "fp8_base": False, "fp8_base_unet": False,
            "resize_interpolation": a.resize_interpolation,
            # kohya's validation keys (the options as given; images = the held-out images x repeats)
            "validation_seed": a.validation_seed, "validation_split": a.validation_split,
            "max_validation_steps": a.max_validation_steps, "validate_every_n_epochs": a.validate_every_n_epochs,
            "validate_every_n_steps": a.validate_every_n_steps,
            "num_validation_images": validation_group.num_train_images if validation_group is not None else 0,
            "sd_model_name": os.path.basename(os.path.normpath(model_path)) if model_path else None,
            "sd_model_hash": model_hash, "new_sd_model_hash": new_model_hash,
            "sd_scripts_commit_hash": "sdms",
        }
        if a.vae:
            self.values.update({"vae_name": os.path.basename(a.vae), "vae_hash": vae_hash,
                                "new_vae_hash": new_vae_hash})
        network_args = network_args_as_written(a.network_args)
        if network_args:  # kohya: the key=value strings as given (+ its dropout default), omitted when none
            if not a.dim_from_weights:
                network_args.setdefault("dropout", a.network_dropout)
            self.values["network_args"] = json.dumps(network_args)
        world = group.datasets[0].world if group.datasets else 1
        self.values.update(training_metadata(group, a, a.train_batch_size * world * a.gradient_accumulation_steps))

    def for_save(self, step, epoch):
        a = self.args
        values = dict(self.values, steps=step, epoch=epoch, training_finished_at=time.time())
        metadata = lora_metadata(values, minimal=a.no_metadata)
        metadata.update(model_spec_metadata(a, self.spec, "lora"))
        return metadata

