"""kohya's model-spec options (`sai_model_spec.add_model_spec_arguments`) and the `modelspec.*` metadata both
trainers write into a `.safetensors` LoRA or embedding, as kohya's `get_sai_model_spec` builds it:

- title: `--metadata_title`, else `--output_name`;
- author, description, license, tags, and kohya's newer fields usage_hint, thumbnail, merged_from,
  trigger_phrase, preprocessor, is_negative_embedding: written as given (`modelspec.<field>`), left out when
  not given; a thumbnail that is a file path is stored as a `data:<mime>;base64,...` URL;
- resolution: `--resolution` ("512" -> 512x512, "768,512" -> 768x512), else the architecture's default
  (1024 SDXL, 768 SD2 v-prediction, 512 otherwise), not the dataset's;
- timestep_range "min,max" when `--min_timestep` / `--max_timestep` is set (0 / 1000 for the other),
  encoder_layer = `--clip_skip`, date in whole seconds, implementation_version `sdms/<git commit>`.
"""
import base64
import datetime
import functools
import mimetypes
import os
import subprocess
import time

from ..errors import UserError

STANDARD_FIELDS = ("title", "author", "description", "license", "tags")
NEWER_FIELDS = ("usage_hint", "thumbnail", "merged_from", "trigger_phrase", "preprocessor", "is_negative_embedding")
HELP = {
    "title": "modelspec.title (default: --output_name)", "author": "modelspec.author",
    "description": "modelspec.description", "license": "modelspec.license",
    "tags": "modelspec.tags, comma separated", "usage_hint": "modelspec.usage_hint (how to use the model)",
    "thumbnail": "modelspec.thumbnail: a data URL, or an image file stored as a data URL",
    "merged_from": "modelspec.merged_from (source models of a merge)",
    "trigger_phrase": "modelspec.trigger_phrase", "preprocessor": "modelspec.preprocessor",
    "is_negative_embedding": "modelspec.is_negative_embedding (written as given, e.g. true)",
}
ADAPTER_TITLES = {"lora": "LoRA", "textual_inversion": "TextualInversion"}


def add_model_spec_arguments(parser):
    g = parser.add_argument_group("model-spec metadata (saved .safetensors files)")
    for field in STANDARD_FIELDS + NEWER_FIELDS:
        g.add_argument(f"--metadata_{field}", type=str, default=None, help=HELP[field])
    return parser


def check_model_spec_arguments(args):
    """Before anything loads: a thumbnail file that is not there would otherwise be dropped at the first save."""
    thumbnail = getattr(args, "metadata_thumbnail", None)
    if thumbnail and not thumbnail.startswith("data:") and not os.path.isfile(thumbnail):
        raise UserError(f"--metadata_thumbnail {thumbnail}: no such image file (give an image file or a "
                        f"data: URL)")


def thumbnail_data_url(value):
    if not value or value.startswith("data:"):
        return value
    mime = mimetypes.guess_type(value)[0] or "application/octet-stream"
    with open(value, "rb") as f:
        return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


@functools.lru_cache(maxsize=1)
def implementation_version():
    """`sdms/<git commit>` of this checkout (kohya writes `sd-scripts/<commit>`), `sdms/unknown` outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "sdms/unknown"
    commit = result.stdout.strip()
    return f"sdms/{commit}" if result.returncode == 0 and commit else "sdms/unknown"


def _resolution(args, spec):
    value = getattr(args, "resolution", None)
    if value is not None:  # already checked by the dataset options (blueprint.argparse_values)
        if isinstance(value, (tuple, list)):
            parts = list(value)
        else:
            parts = [int(v) for v in str(value).split(",")]
        return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if spec.family == "sdxl":
        return (1024, 1024)
    if spec.family == "sd2" and spec.prediction_type == "v_prediction":
        return (768, 768)
    return (512, 512)


def _timestep_range(args):
    low, high = getattr(args, "min_timestep", None), getattr(args, "max_timestep", None)
    if low is None and high is None:
        return None
    return f"{0 if low is None else low},{1000 if high is None else high}"


def model_spec_metadata(args, spec, adapter):
    """modelspec.* strings for a file trained from `args` on a model of `spec`; adapter "lora" or
    "textual_inversion"."""
    from ..formats.embeddings import modelspec_metadata
    from ..formats.lora import lora_modelspec

    now = time.time()
    title = args.metadata_title if args.metadata_title is not None else args.output_name
    if title is None:
        title = f"{ADAPTER_TITLES[adapter]}@{now}"
    extra = {field: getattr(args, f"metadata_{field}", None) for field in STANDARD_FIELDS[1:] + NEWER_FIELDS}
    extra["thumbnail"] = thumbnail_data_url(extra["thumbnail"])
    extra["timestep_range"] = _timestep_range(args)
    extra["implementation_version"] = implementation_version()
    build = lora_modelspec if adapter == "lora" else modelspec_metadata
    return build(spec.family, title=title, resolution=_resolution(args, spec), prediction_type=spec.prediction_type,
                 clip_skip=args.clip_skip, date=datetime.datetime.fromtimestamp(int(now)), extra=extra)
