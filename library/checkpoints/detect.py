"""Which model a single file holds: SD1 / SD2 (epsilon or v) / SDXL, from keys, shapes and metadata.

Order of evidence: `model_config` (named spec or diffusers folder) > the spec our writer stores in the
metadata > keys and shapes matched against the named specs. The family comes from the text-encoder
prefixes (reference file_formats.md 6.1/6.2), or from the UNet when a file has no text encoder. Shapes
cannot show the prediction type: `v_parameterization` decides, else a `<file>.yaml` beside the file, else the
file's own record (our spec or SAI ModelSpec metadata), else for SD2: epsilon when the user spoke kohya's
language (`--v2` without `--v_parameterization` means the 512px epsilon model there), epsilon when a `.ckpt`
says global_step 875000 (that model), otherwise v-prediction (the 768-v model, as diffusers assumes).
Overrides `v2` / `sdxl` that contradict the keys are errors, not silent reinterpretations.
"""
import dataclasses
import os
import re

from ..errors import UserError
from ..models.configs import SPEC_NAMES, get_spec
from .diffusers_folder import spec_from_diffusers_folder
from .layout import TEXT_ENCODER_LAYOUTS, UNET_PREFIX
from .spec_metadata import spec_from_metadata
from .structure import differences, file_structure, spec_structure

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# Named specs tried for each family, full size first; SD2's pair differs only in prediction/resolution.
CANDIDATES = {"sd1": ["sd15", "tiny-sd15"], "sd2": ["sd21", "tiny-sd21"], "sdxl": ["sdxl-base", "tiny-sdxl"]}
SD2_EPSILON_GLOBAL_STEP = 875000
_SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."


def resolve_model_config(model_config):
    """A ModelSpec from `--model_config`: one of our named specs, or a diffusers folder with config.json files."""
    if os.path.exists(os.fspath(model_config)):
        return spec_from_diffusers_folder(model_config)
    if model_config in SPEC_NAMES:
        return get_spec(model_config)
    raise UserError(f"--model_config {model_config}: neither an existing diffusers folder (with unet/, vae/, "
                    f"text_encoder/ config.json files) nor a named config ({', '.join(SPEC_NAMES)})")


def family_from_keys(tensors):
    """"sd1" | "sd2" | "sdxl" | None from the text-encoder prefixes, else from the UNet's conditioning."""
    names = tensors.keys()
    if any(n.startswith(_SDXL_REFINER_PREFIX) for n in names):
        raise UserError("this looks like an SDXL refiner checkpoint (OpenCLIP encoder at "
                        f"{_SDXL_REFINER_PREFIX}); only SDXL base models are supported")
    for family in ("sdxl", "sd2", "sd1"):
        prefix = TEXT_ENCODER_LAYOUTS[family][-1][1]
        if any(n.startswith(prefix) for n in names):
            return family
    if UNET_PREFIX + "label_emb.0.0.weight" in tensors:
        return "sdxl"
    key = next((n for n in names if n.startswith(UNET_PREFIX) and n.endswith("attn2.to_k.weight")), None)
    if key is not None:
        return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(int(tensors[key].shape[-1]))
    return None


def yaml_says_v(path):
    """True/False when `<file>.yaml` beside the checkpoint exists (A1111 convention), else None."""
    if not path:
        return None
    yaml_path = os.path.splitext(os.fspath(path))[0] + ".yaml"
    if not os.path.isfile(yaml_path):
        return None
    try:
        with open(yaml_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*(#.*)?$", text, re.MULTILINE) is not None


def check_overrides(family, v2, sdxl, path):
    name = FAMILY_NAMES[family]
    if v2 is True and family != "sd2":
        raise UserError(f"--v2 was given but {path} is an {name} checkpoint (by its keys); remove --v2")
    if sdxl is True and family != "sdxl":
        raise UserError(f"--sdxl was given but {path} is an {name} checkpoint (by its keys); remove --sdxl "
                        "or use a non-SDXL script")
    if v2 is False and family == "sd2" or sdxl is False and family == "sdxl":
        raise UserError(f"{path} is an {name} checkpoint (by its keys) but the options say it is not; "
                        f"pass {'--v2' if family == 'sd2' else '--sdxl'} or another checkpoint")


def _family_from_overrides(v2, sdxl):
    if sdxl:
        return "sdxl"
    if v2:
        return "sd2"
    return None


def modelspec_prediction(metadata):
    """Prediction type from SAI ModelSpec metadata (kohya writes it), else None."""
    metadata = metadata or {}
    value = metadata.get("modelspec.prediction_type")
    if value in ("v", "v_prediction"):
        return "v_prediction"
    if value == "epsilon":
        return "epsilon"
    architecture = metadata.get("modelspec.architecture", "")
    if architecture.startswith("stable-diffusion-v2-768-v"):
        return "v_prediction"
    if architecture.startswith("stable-diffusion-v2-512"):
        return "epsilon"
    return None


def decide_prediction(family, path, v_parameterization, global_step, stored=None, v2=None):
    """--v_parameterization > `<file>.yaml` > the file's own record (our spec or ModelSpec) > family default."""
    if v_parameterization is not None:
        return "v_prediction" if v_parameterization else "epsilon"
    says_v = yaml_says_v(path)
    if says_v is not None:
        return "v_prediction" if says_v else "epsilon"
    if stored is not None:
        return stored
    if family == "sd2":
        return "epsilon" if v2 or global_step == SD2_EPSILON_GLOBAL_STEP else "v_prediction"
    return "epsilon"


def with_prediction(spec, prediction):
    """Set the prediction type; SD2's named specs switch to their v / epsilon sibling (resolution, upcast)."""
    if spec.prediction_type == prediction:
        return spec
    if spec.family == "sd2" and spec.name in ("sd21", "sd21-v", "tiny-sd21", "tiny-sd21-v"):
        base = spec.name.removesuffix("-v")
        return get_spec(base + "-v" if prediction == "v_prediction" else base)
    return dataclasses.replace(spec, prediction_type=prediction)


def _match_named_spec(tensors, family, path):
    found = file_structure(tensors, family)
    if found["unet"] is None and found["vae"] is None and not any(found["text_encoders"]):
        raise UserError(f"{path} holds no Stable Diffusion weights: none of its {len(tensors)} keys start with "
                        f"{UNET_PREFIX!r}, 'first_stage_model.' or a text-encoder prefix (e.g. "
                        f"{', '.join(sorted(tensors)[:3]) or 'no keys at all'})")
    closest = None
    for name in CANDIDATES[family]:
        diff = differences(found, spec_structure(get_spec(name)))
        if not diff:
            return get_spec(name)
        if closest is None or len(diff) < len(closest[1]):
            closest = (name, diff)
    raise UserError(
        f"{path} is an {FAMILY_NAMES[family]} checkpoint whose shapes match none of the known "
        f"architectures (closest: {closest[0]}; {'; '.join(closest[1][:4])}). Head counts cannot be read from "
        "weights: pass --model_config with a diffusers folder holding unet/, vae/, text_encoder/ config.json "
        f"files or one of the named configs ({', '.join(n for v in CANDIDATES.values() for n in v)})")


def detect_spec(tensors, path=None, metadata=None, model_config=None, v2=None, v_parameterization=None,
                sdxl=None, global_step=None):
    """The ModelSpec a single file's tensors (LDM/SGM names) should be loaded with."""
    path = path or "checkpoint"
    if model_config is not None:
        spec = resolve_model_config(model_config)
        if family_from_keys(tensors) not in (None, spec.family):
            raise UserError(f"--model_config {model_config} describes an {FAMILY_NAMES[spec.family]} model but "
                            f"{path} is an {FAMILY_NAMES[family_from_keys(tensors)]} checkpoint (by its keys)")
        check_overrides(spec.family, v2, sdxl, path)
        prediction = decide_prediction(spec.family, path, v_parameterization, global_step,
                                       stored=spec.prediction_type)
        return with_prediction(spec, prediction)
    stored = spec_from_metadata(metadata, path)
    if stored is not None:
        check_overrides(stored.family, v2, sdxl, path)
        prediction = decide_prediction(stored.family, path, v_parameterization, global_step,
                                       stored=stored.prediction_type)
        return with_prediction(stored, prediction)
    family = family_from_keys(tensors) or _family_from_overrides(v2, sdxl)
    if family is None:
        raise UserError(f"cannot tell which model family {path} is (no text encoder keys and no UNet "
                        "cross-attention); pass --v2, --sdxl or --model_config")
    check_overrides(family, v2, sdxl, path)
    spec = _match_named_spec(tensors, family, path)
    prediction = decide_prediction(family, path, v_parameterization, global_step,
                                   stored=modelspec_prediction(metadata), v2=v2)
    return with_prediction(spec, prediction)
