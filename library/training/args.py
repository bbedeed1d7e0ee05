"""Command-line options shared by both trainers, with kohya sd-scripts' names and defaults.

Aliases accept the names diffusers and mindone users type (e.g. `--total_step`); trainer-specific options
live in the trainer scripts.
"""
import argparse

from .lr_scheduler_classes import TORCH_SCHEDULERS
from .lr_schedules import SCHEDULERS
from .optimizers import SUPPORTED as OPTIMIZERS


def int_or_float(value):
    """kohya's type of --lr_warmup_steps / --lr_decay_steps: a step count (integer >= 1), a fraction (< 1) of the
    total steps, or a percentage ("5%")."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        number = float(text)
        return int(text) if number >= 1 else number
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a step count (integer), a fraction < 1 or a "
                                         f"percentage") from None


def add_model_arguments(parser):
    g = parser.add_argument_group("model")
    g.add_argument("--pretrained_model_name_or_path", "--pretrained_model", type=str, default=None,
                   help="single-file checkpoint (.safetensors; .ckpt with --allow_unsafe_pickle), a diffusers "
                        "folder, or a named tiny preset such as `tiny-sd15` (created on first use)")
    g.add_argument("--v2", action="store_true", default=None, help="force SD 2.x (auto-detected otherwise)")
    g.add_argument("--v_parameterization", action="store_true", default=None,
                   help="v-prediction target (auto for SD 2.x 768-v checkpoints that record it)")
    g.add_argument("--sdxl", action="store_true", default=None, help="force SDXL (auto-detected otherwise)")
    g.add_argument("--model_config", type=str, default=None,
                   help="a diffusers folder with config.json files or a named config (sd15, sdxl-base, tiny-sd15...) "
                        "for single files whose shapes match no known architecture")
    g.add_argument("--vae", type=str, default=None, help="VAE to use instead of the checkpoint's")
    g.add_argument("--allow_unsafe_pickle", action="store_true",
                   help="allow reading pickled .ckpt/.pt/.bin files (they can run code; prefer .safetensors)")


def add_training_arguments(parser):
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", type=str, default=None, help="where trained files go")
    g.add_argument("--output_name", type=str, default=None, help="base name of the trained files")
    g.add_argument("--save_precision", type=str, default=None, choices=[None, "float", "fp16", "bf16"])
    g.add_argument("--save_every_n_epochs", type=int, default=None)
    g.add_argument("--save_every_n_steps", type=int, default=None)
    g.add_argument("--save_n_epoch_ratio", type=int, default=None,
                   help="save every floor(epochs / N) epochs (at least N files in all; overrides "
                        "--save_every_n_epochs)")
    g.add_argument("--save_last_n_epochs", type=int, default=None,
                   help="with --save_every_n_epochs: remove the file saved N saves earlier")
    g.add_argument("--save_last_n_epochs_state", type=int, default=None,
                   help="as --save_last_n_epochs, for the state folders (default: --save_last_n_epochs)")
    g.add_argument("--save_last_n_steps", type=int, default=None,
                   help="with --save_every_n_steps: remove files saved more than N steps earlier")
    g.add_argument("--save_last_n_steps_state", type=int, default=None,
                   help="as --save_last_n_steps, for the state folders (default: --save_last_n_steps)")
    g.add_argument("--save_state", action="store_true", help="also save a resumable training state with each save")
    g.add_argument("--save_state_on_train_end", action="store_true")
    g.add_argument("--resume", type=str, default=None, help="a state folder written by --save_state")
    g.add_argument("--train_batch_size", type=int, default=1)
    g.add_argument("--max_train_steps", "--total_step", type=int, default=1600)
    g.add_argument("--max_train_epochs", "--num_train_epochs", type=int, default=None,
                   help="overrides --max_train_steps")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--gradient_checkpointing", action="store_true", help="recompute activations (saves memory)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", type=str, default="no", choices=["no", "fp16", "bf16"])
    g.add_argument("--no_half_vae", action="store_true", help="keep the VAE in fp32 under mixed precision")
    g.add_argument("--clip_skip", type=int, default=None)
    g.add_argument("--noise_offset", type=float, default=None)
    g.add_argument("--noise_offset_random_strength", action="store_true")
    g.add_argument("--min_timestep", type=int, default=None)
    g.add_argument("--max_timestep", type=int, default=None)
    g.add_argument("--min_snr_gamma", type=float, default=None)
    g.add_argument("--logging_dir", type=str, default=None, help="per-step CSV log and TensorBoard events")
    g.add_argument("--log_prefix", type=str, default=None)
    g.add_argument("--log_with", type=str, default=None, choices=[None, "tensorboard", "wandb", "all"],
                   help="tensorboard (wandb and all: kohya's names, refused here)")
    g.add_argument("--mode", type=str, default="graph", choices=["graph", "pynative"],
                   help="MindSpore execution mode; pynative is a debugging aid (much slower)")
    g.add_argument("--device", type=str, default=None, choices=[None, "CPU", "GPU", "Ascend"],
                   help="device target (auto-detected)")
    g.add_argument("--verbose", action="store_true", help="show Python tracebacks for errors")


def add_optimizer_arguments(parser):
    g = parser.add_argument_group("optimizer")
    g.add_argument("--optimizer_type", type=str, default="AdamW", help=f"one of {', '.join(OPTIMIZERS)}")
    g.add_argument("--optimizer_args", type=str, default=None, nargs="*", help="key=value ...")
    g.add_argument("--learning_rate", type=float, default=2e-6)
    g.add_argument("--scale_lr", action="store_true",
                   help="multiply the learning rate by batch size x accumulation steps x workers (diffusers/mindone)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--lr_scheduler", type=str, default="constant", help=f"one of {', '.join(SCHEDULERS)}")
    g.add_argument("--lr_scheduler_type", type=str, default="",
                   help=f"a torch.optim.lr_scheduler class instead of --lr_scheduler: {', '.join(TORCH_SCHEDULERS)}")
    g.add_argument("--lr_scheduler_args", type=str, default=None, nargs="*",
                   help="key=value arguments of the scheduler (e.g. T_max=100)")
    g.add_argument("--lr_warmup_steps", type=int_or_float, default=0,
                   help="steps, or a fraction (< 1) of the total steps")
    g.add_argument("--lr_decay_steps", type=int_or_float, default=0,
                   help="decay steps of warmup_stable_decay, or a fraction (< 1) of the total steps")
    g.add_argument("--lr_scheduler_num_cycles", type=int, default=1)
    g.add_argument("--lr_scheduler_power", type=float, default=1.0)
    g.add_argument("--lr_scheduler_timescale", type=int, default=None,
                   help="inverse_sqrt time scale (default: the warm-up steps)")
    g.add_argument("--lr_scheduler_min_lr_ratio", type=float, default=None,
                   help="lowest lr as a ratio of the initial one (cosine_with_min_lr, warmup_stable_decay)")


def add_sample_arguments(parser):
    g = parser.add_argument_group("samples during training")
    g.add_argument("--sample_prompts", type=str, default=None, help=".txt / .toml / .json prompt file")
    g.add_argument("--sample_every_n_steps", type=int, default=None)
    g.add_argument("--sample_every_n_epochs", type=int, default=None)
    g.add_argument("--sample_at_first", action="store_true")
    g.add_argument("--sample_sampler", type=str, default="ddim")


def add_network_trainer_arguments(parser):
    """Options kohya's train_network has and its textual-inversion trainers do not."""
    g = parser.add_argument_group("starting step")
    g.add_argument("--initial_epoch", type=int, default=None,
                   help="epoch to start at (1 = the first), see --skip_until_initial_step; the lr schedule is "
                        "not moved (it starts from its beginning without --resume)")
    g.add_argument("--initial_step", type=int, default=None,
                   help="step to start at, over all epochs (0 = the first); overrides --initial_epoch")
    g.add_argument("--skip_until_initial_step", action="store_true",
                   help="skip the batches of the steps before --initial_step / --initial_epoch (the same data "
                        "order as a run that trained them); the step counter starts there")
    v = parser.add_argument_group("validation loss")
    v.add_argument("--validation_seed", type=int, default=None,
                   help="seed of the validation split and of the validation noise (default: --seed)")
    v.add_argument("--validation_split", type=float, default=0.0,
                   help="fraction of each dataset's images held out for validation (a dataset config's "
                        "validation_split wins)")
    v.add_argument("--validate_every_n_steps", type=int, default=None,
                   help="validation loss every N steps (default: only at the end of each epoch)")
    v.add_argument("--validate_every_n_epochs", type=int, default=None,
                   help="validation loss every N epochs (default: every epoch)")
    v.add_argument("--max_validation_steps", type=int, default=None,
                   help="validation batches used (default: all)")


def normalise_warmup(args):
    """Values from a --config_file TOML bypass argparse's type: keep step counts integral (`500.0` -> 500) and
    fractions < 1 as ratios, for --lr_warmup_steps and --lr_decay_steps."""
    for name in ("lr_warmup_steps", "lr_decay_steps"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            value = int_or_float(value)
        if value is not None and value >= 1:
            value = int(value)
        setattr(args, name, value)
    return args
