"""Whole single-file checkpoints (LDM/SGM key layout) <-> per-component diffusers/transformers state dicts.

Components: {"unet": {...}, "vae": {...}, "text_encoders": [{...}, ...]} with diffusers/transformers names
(text encoders `text_model.`-prefixed). The family decides the prefixes (reference: file_formats.md 6.1).
"""
import numpy as np

from .clip_keys import hf_clip_from_single_file, hf_clip_to_single_file, hf_to_openclip, openclip_to_hf
from .unet_keys import diffusers_to_ldm_unet, ldm_to_diffusers_unet
from .vae_keys import diffusers_to_ldm_vae, ldm_to_diffusers_vae

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Per family: one (naming, prefix) per text encoder, in the bundle's order.
TEXT_ENCODER_LAYOUTS = {
    "sd1": [("hf", "cond_stage_model.transformer.")],
    "sd2": [("openclip", "cond_stage_model.model.")],
    "sdxl": [("hf", "conditioner.embedders.0.transformer."), ("openclip", "conditioner.embedders.1.model.")],
}
# Training-time buffers, EMA copies and the VAE's training loss found in LDM/SGM files; not weights of the
# inference model.
_IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.", "denoiser.")
_IGNORED_KEYS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights",
}
# SD2: diffusers' encoder drops OpenCLIP ViT-H's last layer; the file keeps the 24-layer shape (kohya).
SD2_EXTRA_OPENCLIP_LAYERS = 1


def with_projection(family, index):
    """Whether text encoder `index` of a family is CLIPTextModelWithProjection (SDXL's second)."""
    return family == "sdxl" and index == 1


def _take(tensors, prefix):
    return {name[len(prefix):]: array for name, array in tensors.items() if name.startswith(prefix)}


def split_single_file(tensors, spec):
    """LDM/SGM tensors -> (components, unexpected full key names, extras {"logit_scale": [...]})."""
    unexpected = []
    tensors = {name: value for name, value in tensors.items() if not name.startswith(_IGNORED_PREFIXES)}
    unet, bad = ldm_to_diffusers_unet(_take(tensors, UNET_PREFIX), spec.unet)
    unexpected += [UNET_PREFIX + n for n in bad]
    vae, bad = ldm_to_diffusers_vae(_take(tensors, VAE_PREFIX), spec.vae)
    unexpected += [VAE_PREFIX + n for n in bad]
    encoders, logit_scales = [], []
    layouts = TEXT_ENCODER_LAYOUTS[spec.family]
    for index, ((naming, prefix), config) in enumerate(zip(layouts, spec.text_encoders)):
        part = _take(tensors, prefix)
        if naming == "hf":
            converted, bad = hf_clip_from_single_file(part)
            extras = {}
        else:
            converted, bad, extras = openclip_to_hf(part, config, with_projection(spec.family, index))
        encoders.append(converted)
        logit_scales.append(extras.get("logit_scale"))
        unexpected += [prefix + n for n in bad]
    known = (UNET_PREFIX, VAE_PREFIX) + tuple(prefix for _, prefix in layouts)
    unexpected += sorted(name for name in tensors if not name.startswith(known) and name not in _IGNORED_KEYS)
    components = {"unet": unet, "vae": vae, "text_encoders": encoders}
    return components, unexpected, {"logit_scale": logit_scales}


def join_single_file(components, spec, logit_scales=None, fabricate=True):
    """Per-component diffusers/transformers tensors -> one LDM/SGM-layout dict (raises if names do not map).

    fabricate: make SD2's OpenCLIP last layer and projection, which diffusers' encoder lacks (a new file);
    `update_single_file` writes into a file that has its own."""
    out, unmapped = {}, []
    unet, bad = diffusers_to_ldm_unet(components["unet"], spec.unet)
    out.update({UNET_PREFIX + n: a for n, a in unet.items()})
    unmapped += ["unet: " + n for n in bad]
    vae, bad = diffusers_to_ldm_vae(components["vae"], spec.vae)
    out.update({VAE_PREFIX + n: a for n, a in vae.items()})
    unmapped += ["vae: " + n for n in bad]
    layouts = TEXT_ENCODER_LAYOUTS[spec.family]
    logit_scales = logit_scales or [None] * len(layouts)
    for index, ((naming, prefix), config, tensors) in enumerate(
            zip(layouts, spec.text_encoders, components["text_encoders"])):
        if naming == "hf":
            converted, bad = hf_clip_to_single_file(tensors), []
        else:
            extra = SD2_EXTRA_OPENCLIP_LAYERS if spec.family == "sd2" and fabricate else 0
            converted, bad = hf_to_openclip(tensors, config, extra_layers=extra, logit_scale=logit_scales[index])
        out.update({prefix + n: a for n, a in converted.items()})
        unmapped += [f"text encoder {index + 1}: {n}" for n in bad]
    if unmapped:
        # A programming error (the Cells' names are fixed), not a user error: fail loudly.
        raise ValueError(f"{len(unmapped)} tensor(s) have no single-file name, e.g. {unmapped[:5]}")
    return {name: np.asarray(array) for name, array in out.items()}


def _legacy_text_name(key):
    """The SD1 name old files use (no `text_model.` after the encoder prefix), or None."""
    for _, prefix in TEXT_ENCODER_LAYOUTS["sd1"]:
        if key.startswith(prefix + "text_model."):
            return prefix + key[len(prefix + "text_model."):]
    return None


def update_single_file(original, components, spec, logit_scales=None):
    """The original file's tensors with the components written back in its own layout (kohya saves a merged
    model over its source checkpoint the same way): the original's key names and shapes (e.g. a [C, C, 1, 1]
    proj_in), and every key the components do not hold (SD2's last OpenCLIP layer, EMA, ...) kept as it is."""
    joined = join_single_file(components, spec, logit_scales, fabricate=False)
    out = dict(original)
    for key, value in joined.items():
        if key not in original:
            key = _legacy_text_name(key)
            if key is None or key not in original:
                continue  # e.g. a logit_scale the original never had
        value = np.asarray(value)
        before = np.shape(original[key])
        if value.shape != before:
            if value.size != int(np.prod(before)):
                raise ValueError(f"{key}: shape {value.shape} does not fit the file's {before}")
            value = value.reshape(before)
        out[key] = value
    return out


_TOKEN_EMBEDDING = {"hf": ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"),
                    "openclip": ("token_embedding.weight",)}


def token_embedding_keys(names):
    """(family, [the single-file key of each text encoder's token embedding]) from a file's tensor names, or
    (None, []) when the file holds no complete set (reading just these rows needs no model)."""
    names = set(names)
    for family in ("sdxl", "sd2", "sd1"):
        keys = []
        for naming, prefix in TEXT_ENCODER_LAYOUTS[family]:
            found = [prefix + n for n in _TOKEN_EMBEDDING[naming] if prefix + n in names]
            if not found:
                break
            keys.append(found[0])
        else:
            return family, keys
    return None, []
