"""Set-up steps both trainer CLIs take, in order: arguments, device, tokenizers, data, model, latents, samples."""
import logging
import os
import signal

from ..errors import UserError
from ..config.cli_parser import CliParser
from ..config.cli_args import add_dataset_arguments, add_config_file_arguments, load_config_file
from ..config.args_file import write_config_file
from ..config.console_log import add_logging_arguments, setup_logging
from ..config.kohya_options import add_kohya_options, apply_kohya_options
from .args import (add_model_arguments, add_training_arguments, add_optimizer_arguments, add_sample_arguments,
                   normalise_warmup)
from .model_spec import add_model_spec_arguments, check_model_spec_arguments
from .loss_args import add_loss_arguments, check_loss_arguments, check_loss_arguments_for_model

log = logging.getLogger("sdms.training")


def build_parser(description, support_dropout, add_method_arguments, script=None):
    """`script` ("train_network" / "train_textual_inversion"): accept every other kohya option of that script
    (ignored with a line or refused, see config/kohya_options.py)."""
    parser = CliParser(description=description)
    add_model_arguments(parser)
    add_dataset_arguments(parser, support_dropout=support_dropout)
    add_training_arguments(parser)
    add_loss_arguments(parser)
    add_optimizer_arguments(parser)
    add_sample_arguments(parser)
    add_method_arguments(parser)
    add_model_spec_arguments(parser)
    add_config_file_arguments(parser)
    add_logging_arguments(parser)
    if script:
        add_kohya_options(parser, script)
    return parser


def parse_arguments(parser, argv):
    args = load_config_file(parser, argv)
    setup_logging(args)
    apply_kohya_options(parser, args)
    if args.output_config:
        if not args.config_file:
            raise UserError("--output_config needs --config_file PATH to write to")
        write_config_file(parser, args, args.config_file)
        print(f"wrote {args.config_file}")
        raise SystemExit(0)
    if args.gradient_accumulation_steps < 1:
        raise UserError(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.max_train_steps is not None and args.max_train_steps < 1 and not args.max_train_epochs:
        raise UserError(f"--max_train_steps must be >= 1, got {args.max_train_steps}")
    if args.max_train_epochs is not None and args.max_train_epochs < 1:
        raise UserError(f"--max_train_epochs must be >= 1, got {args.max_train_epochs}")
    if args.learning_rate is not None and args.learning_rate < 0:
        raise UserError(f"--learning_rate must be >= 0, got {args.learning_rate}")
    check_model_spec_arguments(args)
    if args.seed is None and args.resume:
        args.seed = resumed_seed(args.resume)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(3), "little")
    normalise_warmup(args)
    check_loss_arguments(args)
    check_schedule_saving_and_validation(args)
    return args


def check_schedule_saving_and_validation(args):
    """The lr schedule, saving, starting-step and validation options, refused (or noted when they have no
    effect) before anything loads."""
    from .lr_schedules import check_scheduler_options
    from .saves import check_saving_options
    from .starting_point import check_starting_options
    from .validation import check_validation_options

    check_scheduler_options(args)
    check_saving_options(args)
    check_starting_options(args)
    holds_out = check_validation_options(args)
    if holds_out and not hasattr(args, "validate_every_n_steps"):  # the textual-inversion trainers
        log.warning("validation_split holds images out of training; this trainer computes no validation loss "
                    "(as kohya's train_textual_inversion)")


def resumed_seed(state_path):
    """Without --seed, a resumed run takes the seed of the run it continues (data order, augmentations)."""
    from .state import read_counters

    seed = read_counters(state_path).get("seed")
    return None if seed is None else int(seed)


def setup_device(args):
    from .. import device
    from .distributed import init_world

    target = device.setup(args.device, args.mode)
    if target == "CPU" and args.mixed_precision != "no":
        log.warning("--mixed_precision %s: the CPU has no fast fp16/bf16 kernels; training in fp32",
                    args.mixed_precision)
        args.mixed_precision = "no"
    return init_world(target)


def check_output_dir(args, default_name):
    args.output_dir = args.output_dir or "output"
    args.output_name = args.output_name or default_name
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output_dir {args.output_dir}: cannot create it ({e.strerror})") from e
    if not os.access(args.output_dir, os.W_OK):
        raise UserError(f"--output_dir {args.output_dir}: not writable")


def build_data(args, tokenizers, caption_hook, support_dropout, world, family=None, blueprint=None):
    """`blueprint`: the dataset plan preflight already validated (else made from args here)."""
    from ..data.build import build_dataset_group, verify_bucket_reso_steps
    from ..text.chunking import make_tokenize_fn
    from .masks import uses_loss_mask

    group = build_dataset_group(blueprint or args, tokenize=make_tokenize_fn(tokenizers, args.max_token_length),
                                seed=args.seed, caption_hook=caption_hook, support_dropout=support_dropout)
    group.set_max_train_steps(args.max_train_steps)
    uses_loss_mask(args, group, report=True)
    if family:
        verify_bucket_reso_steps(group, 32 if family == "sdxl" else 64)
    if world.size > 1:
        group = group.shard(world.rank, world.size)
    return group


def load_model(args):
    """Model by path (single file or diffusers folder) or a named tiny preset (built and saved on first use)."""
    from ..checkpoints.loader import load_model as load

    path = resolve_pretrained_path(args.pretrained_model_name_or_path)
    bundle = load(path, model_config=args.model_config, v2=args.v2, v_parameterization=args.v_parameterization,
                  sdxl=args.sdxl, allow_pickle=args.allow_unsafe_pickle, vae=args.vae)
    check_loss_arguments_for_model(args, bundle.spec)  # v-parameterization may be auto-detected
    return bundle


TINY_MODEL_DIR = os.path.join("models")


def resolve_pretrained_path(name):
    """A path as given, or a named tiny preset (`tiny-sd15`, ...) saved as a single file under models/ on first
    use and then loaded through the normal loader like any checkpoint."""
    if not name:
        raise UserError("--pretrained_model_name_or_path is required (a .safetensors file, a diffusers folder, "
                        "or a tiny preset such as tiny-sd15)")
    if os.path.exists(name):
        return name
    from ..models.configs import SPEC_NAMES as SPECS

    if name in SPECS and name.startswith("tiny-"):
        from ..checkpoints.tiny import ensure_tiny_checkpoint

        return ensure_tiny_checkpoint(name, os.path.join(TINY_MODEL_DIR, f"{name}.safetensors"))
    raise UserError(f"--pretrained_model_name_or_path {name}: no such file or folder (tiny presets: "
                    f"{', '.join(s for s in SPECS if s.startswith('tiny-'))})")


class LatentSource:
    """Latents for a batch: the cached ones when the batch carries them, else encoded now. Its generator
    (latents are sampled, not the mean) is part of a resumable state."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, batch):
        if batch.get("latents") is not None:
            return batch["latents"]
        return self.encoder(batch["images"])

    def rng_state(self):
        return self.encoder.rng.bit_generator.state

    def set_rng_state(self, state):
        self.encoder.rng.bit_generator.state = state


def make_latent_source(args, bundle, group, validation_group=None):
    """Latents for a batch: from the cache (memory or .npz) when --cache_latents, else encoded per batch. The
    validation images are cached after the training ones (as kohya), so they change nothing in training."""
    from .latents import LatentEncoder

    encoder = LatentEncoder(bundle.vae, seed=args.seed, batch_size=args.vae_batch_size)
    if args.cache_latents or args.cache_latents_to_disk:
        from ..data.build import check_latent_caching_allowed
        from ..data.latent_cache import cache_latents, vae_fingerprint

        groups = [g for g in (group, validation_group) if g is not None]
        for g in groups:
            check_latent_caching_allowed(g)
        family = "sdxl" if bundle.spec.family == "sdxl" else "sd"
        for g in groups:
            cache_latents(g, encoder, vae_batch_size=args.vae_batch_size, to_disk=args.cache_latents_to_disk,
                          family=family, skip_cache_check=args.skip_cache_check,
                          vae_id=vae_fingerprint(bundle.vae) if args.cache_latents_to_disk else None)
    return LatentSource(encoder)


def make_sample_fn(args, bundle, prompt_rewrite=None):
    """Samples during training through gen_img's pipeline (same samplers, kohya's file names)."""
    if not args.sample_prompts:
        return None
    from ..sampling.training_samples import TrainingSampler

    return TrainingSampler(args, bundle, prompt_rewrite)


def print_dataset(data, bundle):
    """--debug_dataset: buckets, batches, final captions and token ids; no training."""
    from ..data.debug import print_debug_dataset

    print_debug_dataset(data, tokenizer_decode=bundle.tokenizers[0].decode)


def build_validation_data(args, tokenizers, support_dropout, family=None):
    """The images validation_split holds out (train_network's validation loss), or None when none are. Every
    worker gets all of them (each computes the same loss; the main one logs it)."""
    from ..data.build import build_dataset_group, verify_bucket_reso_steps
    from ..text.chunking import make_tokenize_fn

    group = build_dataset_group(args, tokenize=make_tokenize_fn(tokenizers, args.max_token_length),
                                seed=args.seed, split="validation", support_dropout=support_dropout)
    if not group.datasets:
        return None
    group.set_max_train_steps(args.max_train_steps)
    if family:
        verify_bucket_reso_steps(group, 32 if family == "sdxl" else 64)
    log.info("validation: %d image(s) x repeats held out in %d batch(es)", group.num_train_images, len(group))
    return group


def run_training(args, bundle, data, method, world, sample_fn, validation_data=None):
    """Latents, the loop and Ctrl-C: the path of the final file, or None when interrupted (state saved)."""
    from .loop import TrainingLoop, KeyboardInterruptSaved

    # Ctrl-C while latents are cached: once the VAE graph has run, MindSpore turns SIGINT into SIGTERM, which
    # would kill the process without a word; make it the usual KeyboardInterrupt (exit 130, temp files removed)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        latents = make_latent_source(args, bundle, data, validation_data)
    finally:
        signal.signal(signal.SIGTERM, previous)
    loop = TrainingLoop(args, data, method, latents, bundle.spec, world, sample_fn, validation_data)
    try:
        loop.run()
    except KeyboardInterruptSaved as stop:
        print(stop)
        return None
    return loop.last_save


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
