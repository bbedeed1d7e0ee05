"""The `ss_*` training metadata kohya's train_network writes into a LoRA file (reference section 5.7).

Everything is gathered once at the start of training (`TrainingMetadata.start`), and each save adds what
changes (steps, epoch, finish time). Keys that have no meaning here (fp8, validation) are left out.
"""
import collections
import os
import random
import time

from ..formats.lora import base_model_version, checkpoint_hashes, lora_metadata, lora_modelspec

NETWORK_MODULE = "networks.lora"


def _subset_entry(subset, items):
    images = [i for i in items if i.subset is subset]
    return {
        "img_count": len(images), "num_repeats": subset.num_repeats, "color_aug": subset.color_aug,
        "flip_aug": subset.flip_aug, "random_crop": subset.random_crop, "shuffle_caption": subset.shuffle_caption,
        "keep_tokens": subset.keep_tokens, "keep_tokens_separator": subset.keep_tokens_separator,
        "secondary_separator": subset.secondary_separator, "enable_wildcard": subset.enable_wildcard,
        "caption_prefix": subset.caption_prefix, "caption_suffix": subset.caption_suffix,
        "resize_interpolation": subset.resize_interpolation,
        "image_dir": os.path.basename(os.path.normpath(subset.image_dir)) if subset.image_dir else None,
        "class_tokens": subset.class_tokens, "is_reg": subset.is_reg,
    }


def tag_frequency(items):
    """{image folder name: {tag: count}} over caption tags (comma separated), as kohya's ss_tag_frequency."""
    frequency = collections.defaultdict(collections.Counter)
    for item in items:
        folder = os.path.basename(os.path.dirname(item.path))
        for tag in (item.caption or "").split(","):
            tag = tag.strip()
            if tag:
                frequency[folder][tag] += 1
    return {folder: dict(counts) for folder, counts in frequency.items()}


def _reg_images(items):
    """kohya counts reg images before balancing them to the train images (subset repeats, not item repeats)."""
    return sum(item.subset.num_repeats for item in items if item.is_reg)


def dataset_metadata(group):
    """ss_datasets, ss_tag_frequency, ss_dataset_dirs and the image counts for a DatasetGroup."""
    datasets, all_items, dirs = [], [], {}
    for dataset in group.datasets:
        params, items = dataset.params, dataset.items
        all_items.extend(items)
        subsets = []
        for subset in {id(i.subset): i.subset for i in items}.values():
            subsets.append(_subset_entry(subset, items))
            if subset.image_dir:
                name = os.path.basename(os.path.normpath(subset.image_dir))
                dirs[name] = {"n_repeats": subset.num_repeats,
                              "img_count": sum(1 for i in items if i.subset is subset)}
        datasets.append({
            "is_dreambooth": True, "batch_size_per_device": params.batch_size,
            "num_train_images": dataset.num_train_images, "num_reg_images": _reg_images(items),
            "resolution": list(params.resolution) if params.resolution else None,
            "enable_bucket": params.enable_bucket, "min_bucket_reso": params.min_bucket_reso,
            "max_bucket_reso": params.max_bucket_reso, "tag_frequency": tag_frequency(items),
            "bucket_info": {"buckets": {str(i): {"resolution": list(reso), "count": count}
                                        for i, (reso, count) in enumerate(dataset.bucket_table())},
                            "mean_img_ar_error": dataset.mean_ar_error},
            "subsets": subsets,
        })
    first = group.datasets[0].params if group.datasets else None
    return {
        "num_train_images": group.num_train_images, "num_reg_images": _reg_images(all_items),
        "datasets": datasets, "tag_frequency": tag_frequency(all_items), "dataset_dirs": dirs,
        "resolution": str(tuple(first.resolution)) if first and first.resolution else None,
        "batch_size_per_device": first.batch_size if first else None,
    }


class TrainingMetadata:
    """Collects kohya's ss_* values for one training run."""

    def __init__(self, args, spec, network, group, steps_per_epoch, total_steps, network_args):
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
            "network_args": {k: str(v) for k, v in network_args.items()},
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
            "training_comment": a.training_comment,
            "sd_model_name": os.path.basename(os.path.normpath(model_path)) if model_path else None,
            "sd_model_hash": model_hash, "new_sd_model_hash": new_model_hash,
            "sd_scripts_commit_hash": "sdms",
        }
        if a.vae:
            self.values.update({"vae_name": os.path.basename(a.vae), "vae_hash": vae_hash,
                                "new_vae_hash": new_vae_hash})
        self.values.update(dataset_metadata(group))
        first = group.datasets[0].params.resolution if group.datasets else None
        self.resolution = tuple(first) if first else spec.resolution

    def for_save(self, step, epoch):
        a = self.args
        values = dict(self.values, steps=step, epoch=epoch, training_finished_at=time.time())
        metadata = lora_metadata(values, minimal=a.no_metadata)
        extra = {k: getattr(a, f"metadata_{k}", None) for k in ("author", "description", "license", "tags")}
        metadata.update(lora_modelspec(self.spec.family, title=a.metadata_title or a.output_name,
                                       resolution=self.resolution, prediction_type=self.spec.prediction_type,
                                       clip_skip=a.clip_skip, extra=extra))
        return metadata

