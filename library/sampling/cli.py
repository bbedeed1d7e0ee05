"""gen_img.py: kohya's image generator options -> PNG files (see kohya_sd_scripts.md section 7)."""
import os
import sys

from tqdm import tqdm

from ..diffusion.prompt_file import load_prompt_file
from ..diffusion.samplers import SAMPLER_NAMES, resolve_sampler
from ..config.console_log import add_logging_arguments, setup_logging
from ..config.kohya_options import add_kohya_options, apply_kohya_options
from ..errors import UserError
from ..config.cli_parser import CliParser
from .checks import check_sample_settings
from .embeddings import expand_prompt, load_embeddings
from .networks import check_networks, load_networks, set_multipliers
from .pipeline import Pipeline, SamplingOptions, to_uint8
from .png_output import a1111_parameters, file_sha256, gen_img_file_name, save_png, timestamp
from .requests import batches, build_requests


def build_parser():
    p = CliParser(prog="gen_img.py", description="Text-to-image for SD1.x / SD2.x / SDXL")
    m = p.add_argument_group("model")
    m.add_argument("--ckpt", required=True, help="single-file checkpoint (.safetensors/.ckpt) or diffusers folder")
    m.add_argument("--v1", action="store_true", help="SD1.x model (the default when not detected otherwise)")
    m.add_argument("--v2", action="store_true", help="SD2.x model")
    m.add_argument("--sdxl", action="store_true", help="SDXL model")
    m.add_argument("--v_parameterization", action="store_true", help="v-prediction model (SD2 768-v)")
    m.add_argument("--vae", help="VAE file or folder replacing the checkpoint's VAE")
    m.add_argument("--model_config", help="named spec (e.g. tiny-sd15) or a diffusers folder with config.json")
    m.add_argument("--allow_unsafe_pickle", action="store_true",
                   help="allow loading .ckpt/.pt/.bin pickle files (they can run code)")
    m.add_argument("--zero_terminal_snr", action="store_true", help="rescale the schedule to zero terminal SNR")

    q = p.add_argument_group("prompts")
    q.add_argument("--prompt", help="prompt, with in-line options (--n negative, --w, --h, --d, --s, --l, --am ...)")
    q.add_argument("--from_file", help="prompt file: one prompt a line (# comments), or .toml/.json")
    q.add_argument("--images_per_prompt", type=int, default=1)
    q.add_argument("--n_iter", type=int, default=1, help="repeat the whole prompt list this many times")
    q.add_argument("--max_embeddings_multiples", type=int, default=3,
                   help="longest prompt in chunks of 75 tokens (3 = 225 tokens)")

    s = p.add_argument_group("sampling")
    s.add_argument("--sampler", default="ddim", help=f"one of: {', '.join(SAMPLER_NAMES)}")
    s.add_argument("--karras", action="store_true", help="Karras sigmas (k-samplers and DPM-Solver)")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale")
    s.add_argument("--negative_scale", type=float, default=None,
                   help="kohya's guidance scale of the negative prompt: CFG runs against the empty prompt and the "
                        "negative prompt is pushed away with this scale (a third UNet pass); in-prompt --nl")
    s.add_argument("--W", type=int, default=None, help="width (default: the model's resolution)")
    s.add_argument("--H", type=int, default=None, help="height (default: the model's resolution)")
    s.add_argument("--seed", type=int, default=None, help="seed of the per-image seeds (same seed, same images)")
    s.add_argument("--iter_same_seed", action="store_true", help="one seed for every image without --d")
    s.add_argument("--batch_size", type=int, default=1)
    s.add_argument("--clip_skip", type=int, default=None)
    s.add_argument("--no_clip_sample", action="store_true",
                   help="DDIM: do not clamp the x0 estimate to [-1, 1] (kohya's generator clamps)")
    s.add_argument("--original_width", type=int)
    s.add_argument("--original_height", type=int)
    s.add_argument("--original_width_negative", type=int)
    s.add_argument("--original_height_negative", type=int)
    s.add_argument("--crop_top", type=int, default=0)
    s.add_argument("--crop_left", type=int, default=0)

    s.add_argument("--fp16", action="store_true", help="UNet and text encoders compute in fp16 (Ascend/GPU)")
    s.add_argument("--bf16", action="store_true", help="UNet and text encoders compute in bf16 (Ascend/GPU)")
    s.add_argument("--no_half_vae", action="store_true",
                   help="accepted for kohya compatibility: the VAE always decodes in fp32")

    n = p.add_argument_group("embeddings and networks")
    n.add_argument("--textual_inversion_embeddings", nargs="*", default=[],
                   help="embedding files; the trigger word is the file name without extension")
    n.add_argument("--network_module", nargs="*", default=[])
    n.add_argument("--network_weights", nargs="*", default=[])
    n.add_argument("--network_mul", nargs="*", type=float, default=[])
    n.add_argument("--network_args", nargs="*", default=[])
    n.add_argument("--network_merge", action="store_true", help="merge the LoRAs into the weights once")

    o = p.add_argument_group("output")
    o.add_argument("--outdir", default="outputs")
    o.add_argument("--sequential_file_name", action="store_true", help="im_000001.png, im_000002.png, ...")
    o.add_argument("--verbose", action="store_true", help="tracebacks for errors")
    add_logging_arguments(p)
    return add_kohya_options(p, "gen_img")


def parse_arguments(argv=None):
    """gen_img's options, kohya's ones it does not have ignored with a line or refused (before any loading)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args, default_level=None)
    return apply_kohya_options(parser, args)


def _check_args(args):
    if not args.prompt and not args.from_file:
        raise UserError("give --prompt or --from_file")
    for name in ("images_per_prompt", "n_iter", "batch_size", "max_embeddings_multiples"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_embeddings_multiples > 3:
        raise UserError("--max_embeddings_multiples: at most 3 (225 tokens)")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.fp16 and args.bf16:
        raise UserError("--fp16 and --bf16: give one of them")
    resolve_sampler(args.sampler)
    _check_outdir(args.outdir)
    if args.network_weights and args.network_module and len(args.network_module) not in (1, len(args.network_weights)):
        raise UserError("--network_module: give one module, or one per --network_weights file")
    check_networks(args.network_weights, args.network_module, args.network_mul, args.network_args)


def _read_prompt_file(path):
    try:
        return load_prompt_file(path)
    except UserError as e:
        if path in str(e):
            raise
        raise UserError(f"--from_file {path}: {e}") from e  # a bad line: say which file it is in


def _check_outdir(outdir):
    """Before the model loads: a folder we cannot write would otherwise fail only at the first image."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"--outdir {outdir}: cannot create it ({e.strerror})") from e
    if not os.access(outdir, os.W_OK):
        raise UserError(f"--outdir {outdir}: not writable")


def _check_requests(requests, spec):
    for request in requests:
        o = request.options
        check_sample_settings(o.width, o.height, o.sampler, spec,
                              f"prompt {request.prompt!r} (--W/--H, --sampler or its --w/--h/--ss)")


def _load_bundle(args):
    from ..checkpoints import load_model

    return load_model(args.ckpt, model_config=args.model_config, v2=args.v2 or None,
                      v_parameterization=args.v_parameterization or None, sdxl=args.sdxl or None,
                      allow_pickle=args.allow_unsafe_pickle, vae=args.vae)


def base_options(args, spec):
    size = spec.resolution
    width, height = args.W or size, args.H or size
    original = None
    if args.original_width or args.original_height:
        original = (args.original_height or height, args.original_width or width)
    original_negative = None
    if args.original_width_negative or args.original_height_negative:
        original_negative = (args.original_height_negative or height, args.original_width_negative or width)
    return SamplingOptions(width=width, height=height, steps=args.steps, scale=args.scale, sampler=args.sampler,
                           karras=args.karras, clip_skip=args.clip_skip, max_chunks=args.max_embeddings_multiples,
                           clip_sample=not args.no_clip_sample, original_size=original,
                           original_size_negative=original_negative, crop_top_left=(args.crop_top, args.crop_left),
                           zero_terminal_snr=args.zero_terminal_snr, negative_scale=args.negative_scale)


def _apply_precision(args, bundle):
    """--fp16/--bf16: the UNet and text encoders compute in low precision (norms, softmax, guidance in fp32), as
    kohya's gen_img; the VAE stays fp32 (fp16 VAEs give NaN/black images, kohya's --no_half_vae issue)."""
    from .. import device
    from ..models.precision import apply_mixed_precision_to_models

    dtype = "fp16" if args.fp16 else "bf16" if args.bf16 else None
    if dtype is None:
        return
    if device.is_cpu():  # the CLI's own one-line message instead of the library's Python warning
        print(f"warning: --{dtype}: the CPU has no fast fp16/bf16 kernels; generating in fp32", file=sys.stderr)
        return
    apply_mixed_precision_to_models(bundle, dtype)


def _hashes(args, embeddings):
    model_hash = file_sha256(args.ckpt, 10) if os.path.isfile(args.ckpt) else None
    lora_hashes = {os.path.splitext(os.path.basename(w))[0]: file_sha256(w, 12) for w in args.network_weights}
    ti_hashes = {os.path.splitext(os.path.basename(e))[0]: file_sha256(e, 12)
                 for e in args.textual_inversion_embeddings}
    return dict(model_hash=model_hash, model_name=os.path.splitext(os.path.basename(args.ckpt.rstrip("/")))[0],
                lora_hashes=lora_hashes, ti_hashes=ti_hashes if embeddings else None)


def _chunks(request, parameters):
    o = request.options
    chunks = {"parameters": parameters, "prompt": request.prompt, "seed": request.seed, "sampler": o.sampler,
              "steps": o.steps, "scale": o.scale, "negative-prompt": request.negative_prompt or None,
              "negative-scale": o.negative_scale}  # kohya's chunk, left out when there is none
    if o.original_size:
        chunks.update({"original-height": o.original_size[0], "original-width": o.original_size[1]})
    if o.original_size_negative:
        chunks.update({"original-height-negative": o.original_size_negative[0],
                       "original-width-negative": o.original_size_negative[1]})
    if o.crop_top_left != (0, 0):
        chunks.update({"crop-top": o.crop_top_left[0], "crop-left": o.crop_top_left[1]})
    return chunks


def main(argv=None):
    args = parse_arguments(argv)
    _check_args(args)
    from .. import device

    device.setup()
    lines = [args.prompt] if args.prompt else _read_prompt_file(args.from_file)
    bundle = _load_bundle(args)
    embeddings = load_embeddings(bundle, args.textual_inversion_embeddings, allow_pickle=args.allow_unsafe_pickle)
    networks = load_networks(bundle, args.network_weights, args.network_module, args.network_mul,
                             args.network_merge, args.network_args, allow_pickle=args.allow_unsafe_pickle)
    _apply_precision(args, bundle)  # after the LoRAs, so their adapters compute in the same dtype
    requests = build_requests(lines, base_options(args, bundle.spec), args.images_per_prompt, args.n_iter,
                              args.seed, args.iter_same_seed)
    _check_requests(requests, bundle.spec)
    hashes = _hashes(args, embeddings)
    pipeline = Pipeline(bundle)
    written = 0
    with tqdm(total=len(requests), desc="images", unit="img") as progress:
        for batch in batches(requests, args.batch_size):
            set_multipliers(networks, batch[0].network_multipliers)
            images = to_uint8(pipeline([expand_prompt(r.prompt, embeddings) for r in batch],
                                       [expand_prompt(r.negative_prompt, embeddings) for r in batch],
                                       [r.seed for r in batch], batch[0].options))
            stamp = timestamp()
            for index, (request, image) in enumerate(zip(batch, images)):
                o = request.options
                parameters = a1111_parameters(request.prompt, request.negative_prompt, o.steps, o.sampler, o.scale,
                                              request.seed, o.width, o.height, karras=o.karras,
                                              clip_skip=o.clip_skip, **hashes)
                written += 1
                path = gen_img_file_name(args.outdir, index, request.seed, stamp,
                                         sequential=written if args.sequential_file_name else None,
                                         filename=request.filename)
                save_png(path, image, _chunks(request, parameters))
                progress.update(1)
    print(f"wrote {written} image(s) to {args.outdir}")
    return 0
