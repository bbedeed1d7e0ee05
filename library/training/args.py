"""Command-line options shared by both trainers, with kohya sd-scripts' names and defaults.

Aliases accept the names diffusers and mindone users type (e.g. `--total_step`); trainer-specific options
live in the trainer scripts.
"""
from .lr_schedules import SCHEDULERS
from .optimizers import SUPPORTED as OPTIMIZERS


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
    g.add_argument("--save_last_n_epochs", type=int, default=None)
    g.add_argument("--save_last_n_steps", type=int, default=None)
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
    g.add_argument("--lr_warmup_steps", type=float, default=0,
                   help="steps, or a fraction (< 1) of the total steps")
    g.add_argument("--lr_scheduler_num_cycles", type=int, default=1)
    g.add_argument("--lr_scheduler_power", type=float, default=1.0)


def add_sample_arguments(parser):
    g = parser.add_argument_group("samples during training")
    g.add_argument("--sample_prompts", type=str, default=None, help=".txt / .toml / .json prompt file")
    g.add_argument("--sample_every_n_steps", type=int, default=None)
    g.add_argument("--sample_every_n_epochs", type=int, default=None)
    g.add_argument("--sample_at_first", action="store_true")
    g.add_argument("--sample_sampler", type=str, default="ddim")


def normalise_warmup(args):
    """argparse reads `--lr_warmup_steps 500` as 500.0; keep integers integral (fractions < 1 stay ratios)."""
    w = args.lr_warmup_steps
    if w is not None and w >= 1:
        args.lr_warmup_steps = int(w)
    return args
