"""One-off latent caching time, measured inside the trainer's own set-up (run by `python -m bench --extras`).

    python -m bench.cache_probe <train_textual_inversion.py arguments>

Parses the arguments as the TI trainer does, loads the model and the dataset through the same session
functions, then times `make_latent_source` (with --cache_latents: VAE encoder compile + encoding every image
once) and prints one JSON line: {"cache_s": ..., "images": ...}.
"""
import json
import sys
import time


def main(argv):
    import train_textual_inversion as cli
    from library.text.token_strings import add_token_string, caption_transform
    from library.training import session

    parser = session.build_parser("cache probe", False, cli.add_textual_inversion_arguments)
    args = session.parse_arguments(parser, argv)
    world = session.setup_device(args)
    bundle = session.load_model(args)
    add_token_string(bundle.tokenizers, args.token_string, args.num_vectors_per_token)
    hook = caption_transform(args.token_string, args.num_vectors_per_token)
    data = session.build_data(args, bundle.tokenizers, hook, support_dropout=False, world=world,
                              family=bundle.spec.family)
    start = time.perf_counter()
    session.make_latent_source(args, bundle, data)
    elapsed = time.perf_counter() - start
    print(json.dumps({"cache_s": elapsed, "images": sum(len(d.items) for d in data.datasets)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
