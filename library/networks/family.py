"""Which model family a LoRA file was made for, so a wrong pairing fails with a message that says so."""
from ..errors import UserError

_FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_SDXL_UNET_MARKERS = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")
# Width of the cross-attention context (attn2 to_k input) and of the first text encoder, per family.
_CONTEXT_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def family_from_metadata(metadata):
    """kohya's ss_base_model_version / ss_v2, or modelspec.architecture; None when absent."""
    metadata = metadata or {}
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2"):
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    architecture = metadata.get("modelspec.architecture", "")
    for prefix, family in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v2", "sd2"),
                           ("stable-diffusion-v1", "sd1")):
        if architecture.startswith(prefix):
            return family
    if metadata.get("ss_v2") in ("True", "False"):
        return "sd2" if metadata["ss_v2"] == "True" else "sd1"
    return None


def family_from_keys(tensors):
    """Guess from key names (SDXL's two encoders / LDM UNet names) and context width; None if unsure."""
    keys = list(tensors)
    if any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys) or any(k.startswith(_SDXL_UNET_MARKERS)
                                                                           for k in keys):
        return "sdxl"
    for key in keys:
        if "attn2_to_k.lora_down.weight" in key:
            shape = getattr(tensors[key], "shape", ())
            if len(shape) >= 2 and shape[1] in _CONTEXT_DIMS:
                return _CONTEXT_DIMS[shape[1]]
    return None


def describe(family):
    return _FAMILY_NAMES.get(family, family)


def check_family(tensors, metadata, model_family, source):
    """Raise UserError when the file's text-encoder layout or stated family cannot be this model's."""
    keys = list(tensors)
    single_te = [k for k in keys if k.startswith("lora_te_")]
    dual_te = [k for k in keys if k.startswith(("lora_te1_", "lora_te2_"))]
    sdxl_unet = [k for k in keys if k.startswith(_SDXL_UNET_MARKERS)]
    stated = family_from_metadata(metadata)
    if model_family == "sdxl" and single_te:
        raise UserError(f"{source} is a LoRA for {describe(stated or 'sd1')} "
                        f"(single text encoder keys such as {single_te[0]}); the model is SDXL")
    if model_family != "sdxl" and (dual_te or sdxl_unet):
        example = (dual_te or sdxl_unet)[0]
        raise UserError(f"{source} is a LoRA for SDXL (keys such as {example}); the model is "
                        f"{describe(model_family)}")
    guessed = family_from_keys(tensors)
    if guessed and guessed != model_family:
        raise UserError(f"{source} is a LoRA for {describe(guessed)}; the model is {describe(model_family)}")
    return stated or guessed
