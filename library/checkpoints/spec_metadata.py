"""Our model spec recorded in a single file's safetensors metadata, so the file reloads without guessing."""
import dataclasses
import json

from ..errors import UserError
from ..models.configs import ModelSpec

SPEC_METADATA_KEY = "ms_sd.model_spec"  # JSON of the ModelSpec fields
SPEC_NAME_METADATA_KEY = "ms_sd.model_spec_name"
FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")


# SAI ModelSpec architecture ids (what kohya and A1111 read) per family / prediction.
_MODELSPEC_ARCHITECTURES = {("sd1", "epsilon"): "stable-diffusion-v1", ("sd1", "v_prediction"): "stable-diffusion-v1",
                            ("sd2", "epsilon"): "stable-diffusion-v2-512",
                            ("sd2", "v_prediction"): "stable-diffusion-v2-768-v",
                            ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base",
                            ("sdxl", "v_prediction"): "stable-diffusion-xl-v1-base"}


def spec_to_metadata(spec):
    """{metadata key: str} describing `spec` (name + config dicts)."""
    return {SPEC_METADATA_KEY: json.dumps(dataclasses.asdict(spec), sort_keys=True),
            SPEC_NAME_METADATA_KEY: spec.name}


def modelspec_metadata(spec):
    """The SAI ModelSpec keys other tools read from a full checkpoint (callers' own values take precedence)."""
    return {"modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": _MODELSPEC_ARCHITECTURES[(spec.family, spec.prediction_type)],
            "modelspec.prediction_type": "v" if spec.prediction_type == "v_prediction" else "epsilon",
            "modelspec.resolution": f"{spec.resolution}x{spec.resolution}"}


def spec_from_metadata(metadata, path):
    """The ModelSpec stored by our writer, or None when the file has none. Raises on a damaged record."""
    raw = (metadata or {}).get(SPEC_METADATA_KEY)
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        spec = ModelSpec(**fields)
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path}: metadata entry {SPEC_METADATA_KEY!r} is not a model spec ({e}); pass "
                        "--model_config to say which architecture the file holds") from e
    if (spec.family not in FAMILIES or spec.prediction_type not in PREDICTION_TYPES
            or not isinstance(spec.unet, dict) or not isinstance(spec.vae, dict)
            or not isinstance(spec.text_encoders, list)):
        raise UserError(f"{path}: metadata entry {SPEC_METADATA_KEY!r} has an invalid family, prediction type or "
                        "config; pass --model_config to say which architecture the file holds")
    return spec
