#!/usr/bin/env python
"""LoRA training for SD 1.x, SD 2.x and SDXL (kohya sd-scripts' train_network.py options and files, on MindSpore).

    python train_network.py --pretrained_model_name_or_path model.safetensors --dataset_config dataset.toml \
        --network_module networks.lora --network_dim 8 --network_alpha 4 --learning_rate 1e-4 \
        --max_train_steps 1000 --output_dir output --output_name mylora

DreamBooth with prior preservation: put the class images in an is_reg subset (or `--reg_data_dir`); with
`--class_prompt "a photo of a dog" --num_class_images 100` the missing ones are generated first.
"""
import library  # noqa: F401  (quiet MindSpore start-up)
from library.errors import UserError, run_cli
from library.training import session
from library.training.preflight import check_before_loading


def add_network_arguments(parser):
    from library.networks import NETWORK_MODULE_NAMES
    from library.training.args import add_network_trainer_arguments

    g = parser.add_argument_group("network (LoRA)")
    g.add_argument("--network_module", type=str, default="networks.lora",
                   help=f"kohya's module path; accepted: {', '.join(NETWORK_MODULE_NAMES)}")
    g.add_argument("--network_dim", type=int, default=None, help="LoRA rank (default 4)")
    g.add_argument("--network_alpha", type=float, default=1.0, help="scale = alpha / dim (default 1)")
    g.add_argument("--network_dropout", type=float, default=None, help="dropout on the rank activations")
    g.add_argument("--network_args", type=str, default=None, nargs="*",
                   help="key=value: conv_dim, conv_alpha, rank_dropout, module_dropout, loraplus_lr_ratio, ...")
    g.add_argument("--network_weights", type=str, default=None, help="start from this LoRA file")
    g.add_argument("--dim_from_weights", action="store_true", help="ranks/alphas from --network_weights")
    g.add_argument("--network_train_unet_only", action="store_true", help="LoRA on the UNet only")
    g.add_argument("--network_train_text_encoder_only", action="store_true", help="LoRA on the text encoder(s) only")
    g.add_argument("--unet_lr", type=float, default=None, help="UNet LoRA learning rate (else --learning_rate)")
    g.add_argument("--text_encoder_lr", type=float, default=None, nargs="*",
                   help="text-encoder LoRA learning rate (the first value is used for every encoder)")
    g.add_argument("--scale_weight_norms", type=float, default=None, help="max-norm regularisation (1.0 is usual)")
    g.add_argument("--base_weights", type=str, default=None, nargs="*", help="LoRA files merged in before training")
    g.add_argument("--base_weights_multiplier", type=float, default=None, nargs="*")
    g.add_argument("--weighted_captions", action="store_true",
                   help="read (word:1.3) attention weights in captions and weight the text conditioning with them "
                        "(kohya; keep commas out of the brackets when shuffling or dropping tags)")
    g.add_argument("--save_model_as", type=str, default="safetensors", choices=["safetensors", "pt", "ckpt"])
    g.add_argument("--no_metadata", action="store_true", help="save only the minimal ss_* metadata")
    g.add_argument("--training_comment", type=str, default=None, help="stored as ss_training_comment")
    d = parser.add_argument_group("DreamBooth class images")
    d.add_argument("--class_prompt", type=str, default=None,
                   help="prompt for generating regularisation images (default: the reg subset's class tokens)")
    d.add_argument("--num_class_images", type=int, default=0,
                   help="fill every regularisation folder up to this many images before training")
    d.add_argument("--class_sample_steps", type=int, default=30, help="sampler steps per class image")
    d.add_argument("--class_guidance_scale", type=float, default=7.5, help="CFG scale for class images")
    d.add_argument("--sample_batch_size", type=int, default=1, help="class images generated per batch")
    add_network_trainer_arguments(parser)  # --initial_step/--initial_epoch, validation loss


def build_parser():
    return session.build_parser("Train a LoRA (kohya networks.lora format).", support_dropout=True,
                                add_method_arguments=add_network_arguments, script="train_network")


def check_network_options(args):
    from library.networks import NETWORK_MODULE_NAMES, parse_network_args

    if args.network_module not in NETWORK_MODULE_NAMES:
        raise UserError(f"--network_module {args.network_module}: only LoRA is available "
                        f"({', '.join(NETWORK_MODULE_NAMES)}); other network modules and LyCORIS: issue 17")
    if args.network_train_unet_only and args.network_train_text_encoder_only:
        raise UserError("--network_train_unet_only and --network_train_text_encoder_only exclude each other")
    if args.network_dim is not None and args.network_dim < 1:
        raise UserError(f"--network_dim must be >= 1, got {args.network_dim}")
    if args.num_class_images < 0:
        raise UserError(f"--num_class_images must be >= 0, got {args.num_class_images}")
    parse_network_args(args.network_args)  # unknown or block-wise keys, bad values: refused now, not at load
    if args.dim_from_weights and not args.network_weights:
        raise UserError("--dim_from_weights needs --network_weights FILE to read the ranks from")
    multipliers, files = args.base_weights_multiplier or [], args.base_weights or []
    if multipliers and len(multipliers) != len(files):
        raise UserError(f"--base_weights_multiplier has {len(multipliers)} value(s) for {len(files)} "
                        "--base_weights file(s); give one per file")
    if args.save_model_as == "ckpt":
        args.save_model_as = "pt"  # kohya writes the same torch.save dict under either name


def warn_weighted_captions_with_shuffling(args, data):
    """kohya's --weighted_captions note: captions are split on caption_separator before the weights are read,
    so shuffling or dropping tags can cut a (word, word:1.2) group apart. kohya allows it; so do we, aloud."""
    if not args.weighted_captions:
        return
    for dataset in data.datasets:
        for subset in dataset.params.subsets:
            if subset.shuffle_caption or subset.caption_tag_dropout_rate > 0:
                print(f"warning: {subset.source}: --weighted_captions with shuffle_caption / "
                      f"caption_tag_dropout_rate: keep '{subset.caption_separator}' out of (...) weight groups, "
                      f"or shuffling cuts them apart (as in kohya)")
                return


def main(argv):
    from library.data.build import check_sizes_fit_model
    from library.networks.class_images import generate_class_images, plan_class_images
    from library.networks.training import LoRATraining
    from library.training.loop import total_steps

    args = session.parse_arguments(build_parser(), argv)
    check_network_options(args)
    blueprint = check_before_loading(args, support_dropout=True,
                                     file_options=("network_weights", "base_weights"))
    session.check_output_dir(args, default_name="last")
    world = session.setup_device(args)
    bundle = session.load_model(args)

    if not args.debug_dataset:
        plan = plan_class_images(args, bundle.spec.resolution)
        if plan and world.is_main:
            generate_class_images(args, bundle, plan)
    data = session.build_data(args, bundle.tokenizers, None, support_dropout=True, world=world,
                              family=bundle.spec.family, blueprint=blueprint)
    check_sizes_fit_model(data, bundle.spec)
    warn_weighted_captions_with_shuffling(args, data)
    validation = session.build_validation_data(args, bundle.tokenizers, support_dropout=True,
                                               family=bundle.spec.family)
    if validation is not None:
        check_sizes_fit_model(validation, bundle.spec)
    if args.debug_dataset:
        session.print_dataset(data, bundle)
        if validation is not None:
            print("validation dataset:")
            session.print_dataset(validation, bundle)
        return 0

    method = LoRATraining(args, bundle, dataset_group=data)
    total, steps_per_epoch = total_steps(args, len(data), world.size)
    method.attach_metadata(data, steps_per_epoch, total, validation)
    sample_fn = method.with_unit_multiplier(session.make_sample_fn(args, bundle))
    saved = session.run_training(args, bundle, data, method, world, sample_fn, validation)
    if saved is None and world.is_main:
        return 130
    if world.is_main:
        print(f"LoRA: {saved}  ({len(method.network)} modules; A1111: copy it into models/Lora and "
              f"use <lora:{args.output_name}:1>)")
    return 0


if __name__ == "__main__":
    run_cli(main)
