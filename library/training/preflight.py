"""Checks that need no model, run right after the arguments are parsed: a bad optimizer, lr schedule, input
file, sample prompt file or dataset config is refused in seconds, before a checkpoint is loaded and latents are
cached (the optimizer and the schedule used to be checked only when the loop started, minutes in)."""
import os

from ..errors import UserError


def check_before_loading(args, support_dropout, file_options=()):
    """Everything checkable without the model; returns the validated dataset blueprint for build_data.
    file_options: the trainer's options naming files it will read (e.g. network_weights)."""
    check_optimizer(args)
    check_lr_schedule(args)
    check_files(args, file_options)
    check_samples(args)
    if args.resume:
        from .state import read_counters

        read_counters(args.resume)
    return check_dataset(args, support_dropout)


def check_optimizer(args):
    from ..config.kohya_options import ALIASES
    from .loop import effective_learning_rate
    from .optimizers import check_optimizer as build_on_placeholder, parse_optimizer_args

    if not args.optimizer_type:  # kohya's default '' means AdamW
        args.optimizer_type = "AdamW"
    lr = effective_learning_rate(args, 1)
    try:
        build_on_placeholder(args.optimizer_type, parse_optimizer_args(args.optimizer_args), lr)
    except UserError as e:
        alias = [f"--{name}" for name, (target, _) in ALIASES.items()
                 if target == "optimizer_type" and getattr(args, name, False)]
        if alias:  # the user typed kohya's old spelling: say what it stands for
            raise UserError(f"{alias[0]} (kohya's old name for --optimizer_type {args.optimizer_type}): {e}") from e
        raise


def check_lr_schedule(args):
    """The schedule as the loop makes it (same call), with a stand-in step count when epochs decide it; the
    options alone were judged by lr_schedules.check_scheduler_options in session.parse_arguments."""
    from .loop import effective_learning_rate
    from .lr_schedules import make_lr_schedule

    total = args.max_train_steps if not args.max_train_epochs and args.max_train_steps else 1_000_000
    make_lr_schedule(args, total, effective_learning_rate(args, 1))


def check_files(args, file_options):
    for option in file_options:
        value = getattr(args, option, None)
        for path in value if isinstance(value, list) else [value]:
            if path and not os.path.isfile(path):  # "" is what GUI files write for "none"
                raise UserError(f"--{option} {path}: no such file")


def check_samples(args):
    from ..diffusion.prompt_file import load_prompt_file
    from ..diffusion.samplers import resolve_sampler

    resolve_sampler(args.sample_sampler or "ddim", option="--sample_sampler")
    if args.sample_prompts:
        try:
            load_prompt_file(args.sample_prompts)
        except UserError as e:
            raise UserError(f"--sample_prompts: {e}") from e


def check_dataset(args, support_dropout):
    """The dataset config (or folder mode) against the trainer's schema, and latent caching against it."""
    from ..config.blueprint import generate_blueprint
    from ..data.build import check_latent_caching_allowed

    blueprint = generate_blueprint(args, support_dropout=support_dropout)
    if args.cache_latents or args.cache_latents_to_disk:
        check_latent_caching_allowed(blueprint)
    return blueprint
