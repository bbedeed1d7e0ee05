#!/usr/bin/env python
"""Textual inversion for SD 1.x, SD 2.x and SDXL (kohya sd-scripts options and file formats, on MindSpore).

    python train_textual_inversion.py --pretrained_model_name_or_path model.safetensors \
        --dataset_config dataset.toml --token_string mytoy --init_word toy --num_vectors_per_token 4 \
        --learning_rate 5e-3 --max_train_steps 1000 --output_dir output
"""
import library  # noqa: F401  (quiet MindSpore start-up)
from library.errors import UserError, run_cli
from library.training import session
from library.training.preflight import check_before_loading


def add_textual_inversion_arguments(parser):
    g = parser.add_argument_group("textual inversion")
    g.add_argument("--token_string", "--placeholder_token", dest="token_string", type=str, default=None,
                   help="the new word to learn; must not be a word the CLIP vocabulary already has")
    g.add_argument("--init_word", "--initializer_token", dest="init_word", type=str, default=None,
                   help="word(s) whose embeddings initialise the new vectors")
    g.add_argument("--num_vectors_per_token", "--num_vectors", dest="num_vectors_per_token", type=int, default=1)
    g.add_argument("--weights", type=str, default=None, help="start from an existing embedding file")
    g.add_argument("--use_object_template", action="store_true", help="ignore captions; use object templates")
    g.add_argument("--use_style_template", action="store_true", help="ignore captions; use style templates")
    g.add_argument("--learnable_property", type=str, default=None, choices=["object", "style", "face"],
                   help="diffusers/mindone name for the template flags (object, style, face)")
    g.add_argument("--save_model_as", type=str, default="safetensors", choices=["safetensors", "pt", "ckpt"])


def build_parser():
    return session.build_parser("Train a textual-inversion embedding.", support_dropout=False,
                                add_method_arguments=add_textual_inversion_arguments,
                                script="train_textual_inversion")


def template_kind(args):
    kinds = [k for k, on in (("object", args.use_object_template), ("style", args.use_style_template)) if on]
    if args.learnable_property:
        kinds.append(args.learnable_property)
    if len(set(kinds)) > 1:
        raise UserError("choose one of --use_object_template, --use_style_template, --learnable_property")
    return kinds[0] if kinds else None


def main(argv):
    from library.data.build import check_sizes_fit_model
    from library.text.token_strings import add_token_string, caption_transform, missing_token_warning
    from library.training.textual_inversion import TextualInversion, warn_network_multipliers

    args = session.parse_arguments(build_parser(), argv)
    if not args.token_string:
        raise UserError("--token_string is required (the new word to learn, e.g. --token_string mytoy)")
    if args.num_vectors_per_token < 1:
        raise UserError(f"--num_vectors_per_token must be >= 1, got {args.num_vectors_per_token}")
    if args.save_model_as == "ckpt":
        args.save_model_as = "pt"
    template = template_kind(args)
    blueprint = check_before_loading(args, support_dropout=False, file_options=("weights",))
    session.check_output_dir(args, default_name=args.token_string)
    world = session.setup_device(args)

    bundle = session.load_model(args)
    token_ids = add_token_string(bundle.tokenizers, args.token_string, args.num_vectors_per_token)
    hook = caption_transform(args.token_string, args.num_vectors_per_token, template)
    data = session.build_data(args, bundle.tokenizers, hook, support_dropout=False, world=world,
                              family=bundle.spec.family, blueprint=blueprint)
    check_sizes_fit_model(data, bundle.spec)
    warn_network_multipliers(data)
    # the caption as training sees it: caption_prefix/suffix may be what carries the token string
    captions = [" ".join(filter(None, (item.subset.caption_prefix, item.caption, item.subset.caption_suffix)))
                for d in data.datasets for item in d.items]
    problem = missing_token_warning(captions, args.token_string, template)
    if problem and not args.debug_dataset:  # the embedding would learn nothing: refuse rather than waste the run
        raise UserError(problem)
    if problem:
        print(f"warning: {problem}")
    if args.debug_dataset:
        print(f"token ids of {args.token_string!r}: {token_ids}")
        session.print_dataset(data, bundle)
        return 0

    method = TextualInversion(args, bundle, token_ids)
    sample_fn = session.make_sample_fn(args, bundle, prompt_rewrite=hook if template is None else None)
    saved = session.run_training(args, bundle, data, method, world, sample_fn)
    if saved is None and world.is_main:
        return 130
    if world.is_main:
        print(f"embedding: {saved}  (use the file name as the word in prompts; "
              f"A1111: copy it into the embeddings folder)")
    return 0


if __name__ == "__main__":
    run_cli(main)
