"""Dataset command-line options with kohya's names and defaults (train_util.add_dataset_arguments and the
dataset-related training options), plus `--config_file` / `--output_config` (parsed by `load_config_file`,
re-exported from args_file.py)."""
from .args_file import load_config_file  # noqa: F401  (part of this module's public interface)


def add_dataset_arguments(parser, support_dropout: bool):
    """Add kohya's dataset flags. `support_dropout`: the caption-dropout trio (LoRA yes, textual inversion no)."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset_config", type=str, default=None,
                   help="dataset config file (.toml or .json); overrides --train_data_dir/--reg_data_dir/--in_json")
    g.add_argument("--train_data_dir", type=str, default=None,
                   help="PARENT folder of sub-folders named '<repeats>_<class tokens>' (folder mode)")
    g.add_argument("--reg_data_dir", type=str, default=None,
                   help="PARENT folder of regularisation sub-folders '<repeats>_<class tokens>'")
    g.add_argument("--in_json", type=str, default=None, help="fine-tuning metadata file (.json/.jsonl)")
    g.add_argument("--dataset_repeats", type=int, default=1, help="repeats of the --in_json dataset")
    g.add_argument("--cache_info", action="store_true",
                   help="cache image sizes and captions in metadata_cache.json inside each image folder")
    g.add_argument("--shuffle_caption", action="store_true", help="shuffle separated caption tags")
    g.add_argument("--caption_separator", type=str, default=",", help="separator of caption tags")
    g.add_argument("--caption_extension", "--caption_extention", dest="caption_extension", type=str,
                   default=".caption", help="extension of caption files (kohya default .caption; use .txt)")
    g.add_argument("--keep_tokens", type=int, default=0, help="keep the first N tags fixed when shuffling")
    g.add_argument("--keep_tokens_separator", type=str, default="",
                   help="tags before this separator stay fixed (e.g. '|||')")
    g.add_argument("--secondary_separator", type=str, default=None,
                   help="separator of tag groups that are shuffled as one tag (e.g. ';;;')")
    g.add_argument("--enable_wildcard", action="store_true", help="{a|b} wildcards and multi-line captions")
    g.add_argument("--caption_prefix", type=str, default=None, help="text put before every caption")
    g.add_argument("--caption_suffix", type=str, default=None, help="text put after every caption")
    g.add_argument("--color_aug", action="store_true", help="weak hue/gamma augmentation")
    g.add_argument("--flip_aug", action="store_true", help="random horizontal flip")
    g.add_argument("--face_crop_aug_range", type=str, default=None,
                   help="face-centred crop scale range, e.g. '2.0,4.0'")
    g.add_argument("--random_crop", action="store_true", help="random instead of centre crop")
    g.add_argument("--debug_dataset", action="store_true", help="print the batches and exit without training")
    g.add_argument("--resolution", type=str, default=None, help="training resolution 'size' or 'width,height'")
    g.add_argument("--cache_latents", action="store_true", help="encode images once with the VAE, keep in memory")
    g.add_argument("--vae_batch_size", type=int, default=1, help="batch size when caching latents")
    g.add_argument("--cache_latents_to_disk", action="store_true",
                   help="also store cached latents as <image>_<WWWW>x<HHHH>_sd.npz next to the images")
    g.add_argument("--skip_cache_check", action="store_true",
                   help="reuse existing latent npz files without checking them")
    g.add_argument("--enable_bucket", action="store_true", help="aspect-ratio bucketing")
    g.add_argument("--min_bucket_reso", type=int, default=256, help="smallest bucket side")
    g.add_argument("--max_bucket_reso", type=int, default=1024, help="largest bucket side")
    g.add_argument("--bucket_reso_steps", type=int, default=64,
                   help="bucket side step (SD1/2: a multiple of 64, SDXL: of 32)")
    g.add_argument("--bucket_no_upscale", action="store_true", help="never upscale images to fit a bucket")
    g.add_argument("--resize_interpolation", type=str, default=None,
                   choices=["lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box"],
                   help="resize filter (default: box/area when shrinking, lanczos when enlarging)")
    g.add_argument("--token_warmup_min", type=int, default=1, help="tags used at step 0 of token warm-up")
    g.add_argument("--token_warmup_step", type=float, default=0,
                   help="step at which all tags are used (< 1: fraction of max_train_steps)")
    g.add_argument("--alpha_mask", action="store_true", help="use the PNG alpha channel as loss mask")
    g.add_argument("--max_token_length", type=int, default=None, choices=[150, 225],
                   help="captions up to 150 or 225 tokens (2 or 3 chunks of 75)")
    g.add_argument("--prior_loss_weight", type=float, default=1.0, help="loss weight of regularisation images")
    if support_dropout:
        g.add_argument("--caption_dropout_rate", type=float, default=0.0,
                       help="probability of training an image with an empty caption")
        g.add_argument("--caption_dropout_every_n_epochs", type=int, default=0,
                       help="empty captions for every image every N epochs")
        g.add_argument("--caption_tag_dropout_rate", type=float, default=0.0,
                       help="probability of dropping each caption tag")
    return parser


def add_config_file_arguments(parser):
    parser.add_argument("--config_file", type=str, default=None,
                        help="training arguments in a .toml file (sections are ignored); explicit flags win")
    parser.add_argument("--output_config", action="store_true",
                        help="write the non-default arguments to --config_file and exit")
    return parser
