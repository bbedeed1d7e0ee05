"""LoRA as a training method for the shared loop: the network is the only thing that trains.

The base model is frozen; LoRA modules are applied to the UNet and/or text encoders (kohya's switches), their
parameters form the optimizer groups (`--unet_lr`, `--text_encoder_lr`, LoRA+), `--scale_weight_norms` runs
after each update, and saves are kohya LoRA files with the ss_* metadata.
"""
import logging

import numpy as np

from ..errors import UserError
from ..formats.lora import read_lora_file, save_lora
from ..training.method import DiffusionMethod
from . import create_network, create_network_from_weights, parse_network_args

log = logging.getLogger("sdms.lora")


def merge_base_weights(args, bundle):
    """kohya --base_weights: LoRA files merged into the base model before training (multiplier each)."""
    files = args.base_weights or []
    multipliers = list(args.base_weights_multiplier or [])
    if multipliers and len(multipliers) != len(files):
        raise UserError(f"--base_weights_multiplier has {len(multipliers)} value(s) for {len(files)} "
                        "--base_weights file(s); give one per file")
    for index, path in enumerate(files):
        multiplier = multipliers[index] if multipliers else 1.0
        tensors, metadata = read_lora_file(path, allow_pickle=args.allow_unsafe_pickle)
        network = create_network_from_weights(bundle, tensors, multiplier=multiplier)
        network.load_state_dict(tensors, metadata, source=f"--base_weights {path}")
        network.merge_into_base(multiplier)
        log.info("merged %s into the base model (multiplier %s, %d modules)", path, multiplier, len(network))


def dataset_multipliers(group):
    """[(dataset source, network_multiplier)] of a DatasetGroup (none for None)."""
    return [(d.params.source, float(d.params.network_multiplier)) for d in getattr(group, "datasets", [])]


class LoRATraining(DiffusionMethod):
    def __init__(self, args, bundle, dataset_group=None):
        """dataset_group: the training data, when its datasets' `network_multiplier` should apply (kohya)."""
        super().__init__(args, bundle)
        self.network_args = parse_network_args(args.network_args)
        merge_base_weights(args, bundle)
        self.freeze_all()
        self.network = self._create_network(args, bundle)
        if not len(self.network) and args.network_weights:
            self._load_weights(args.network_weights)  # names the file's keys that fit nothing in this model
        if not len(self.network):
            raise UserError("the LoRA network has no modules: check --network_train_unet_only / "
                            "--network_train_text_encoder_only and --network_weights")
        self._setup_dataset_multipliers(dataset_multipliers(dataset_group))
        self.network.apply()
        if args.network_weights:
            self._load_weights(args.network_weights)
        self.trainable = {p.name: p for p in self.network.parameters()}
        for param in self.trainable.values():
            param.requires_grad = True
        self.build_objective()
        self.metadata = None  # set by attach_metadata once the dataset and step counts are known

    def _create_network(self, args, bundle):
        train_unet = not args.network_train_text_encoder_only
        train_text_encoder = not args.network_train_unet_only
        if args.dim_from_weights:
            if not args.network_weights:
                raise UserError("--dim_from_weights needs --network_weights FILE to read the ranks from")
            tensors, _ = read_lora_file(args.network_weights, allow_pickle=args.allow_unsafe_pickle)
            return create_network_from_weights(bundle, tensors, network_args=args.network_args,
                                               train_unet=train_unet, train_text_encoder=train_text_encoder,
                                               seed=args.seed)
        return create_network(bundle, 1.0, args.network_dim, args.network_alpha, args.network_dropout,
                              args.network_args, train_unet=train_unet, train_text_encoder=train_text_encoder,
                              seed=args.seed)

    def _load_weights(self, path):
        tensors, metadata = read_lora_file(path, allow_pickle=self.args.allow_unsafe_pickle)
        missing, unexpected = self.network.load_state_dict(tensors, metadata, source=f"--network_weights {path}")
        excluded = (("lora_te",) if self.args.network_train_unet_only else
                    ("lora_unet",) if self.args.network_train_text_encoder_only else ())
        stray = [name for name in unexpected if not name.startswith(excluded)]
        if stray:  # silently dropping them would train (and save) a different LoRA than the file holds
            raise UserError(f"--network_weights {path}: {len(stray)} module(s) this network does not have, e.g. "
                            f"{', '.join(stray[:3])} (a LoRA for another model or a damaged file; conv modules "
                            "need --network_args conv_dim=N or --dim_from_weights)")
        log.info("--network_weights %s: loaded %d modules; %d not in the file, %d in the file not trained",
                 path, len(self.network) - len(missing), len(missing), len(unexpected))

    def attach_metadata(self, group, steps_per_epoch, total_steps, validation_group=None):
        from .metadata import TrainingMetadata

        self.metadata = TrainingMetadata(self.args, self.spec, self.network, group, steps_per_epoch, total_steps,
                                         validation_group)

    # ------------------------------------------------------------------ datasets' network_multiplier
    def _setup_dataset_multipliers(self, multipliers):
        """kohya (fef17296): a batch of a dataset with network_multiplier m trains with every LoRA output scaled
        by m (all samples of a batch come from one dataset). Only when some dataset is not 1.0: then the modules
        share one scalar Parameter set per batch; otherwise the graph is unchanged."""
        self.batch_multiplier = None
        if not any(m != 1.0 for _, m in multipliers):
            return
        self.network.enable_batch_multiplier()
        self.batch_multiplier = 1.0
        log.info("dataset network_multiplier: %s (each batch trains with the LoRA scaled by its dataset's value)",
                 ", ".join(f"{source}: {m:g}" for source, m in multipliers))

    def _use_batch_multiplier(self, value):
        value = float(value)
        if value != self.batch_multiplier:
            self.network.set_batch_multiplier(value)
            self.batch_multiplier = value

    def before_batch(self, batch):
        if self.batch_multiplier is not None:
            self._use_batch_multiplier(np.asarray(batch["network_multipliers"]).reshape(-1)[0])

    def with_unit_multiplier(self, sample_fn):
        """Samples during training see the LoRA at multiplier 1 whatever the last batch's dataset was."""
        if sample_fn is None or self.batch_multiplier is None:
            return sample_fn

        def sample(*args, **kwargs):
            self._use_batch_multiplier(1.0)
            return sample_fn(*args, **kwargs)

        return sample

    # ------------------------------------------------------------------ hooks the loop calls
    def param_groups(self, lr):
        groups, labels = self.network.trainable_params(self.args.text_encoder_lr, self.args.unet_lr, lr)
        if not groups:
            raise UserError("every LoRA parameter group has learning rate 0: set --learning_rate, --unet_lr or "
                            "--text_encoder_lr")
        self.group_labels = labels
        return groups

    def after_update(self, step):
        """--scale_weight_norms: kohya's max-norm regularisation after every optimizer step."""
        if self.args.scale_weight_norms:
            self.last_max_norm = self.network.apply_max_norm_regularization(self.args.scale_weight_norms)

    @property
    def file_extension(self):
        return "." + self.args.save_model_as

    def save(self, path, step, epoch):
        metadata = self.metadata.for_save(step, epoch) if self.metadata is not None else None
        save_lora(path, self.network.state_dict(), metadata, save_precision=self.args.save_precision)
