"""Checks of sample settings made before any model runs: a size or sampler that cannot work in the 50th prompt
must not cost the 49 images before it (gen_img) or the training before the first sample (--sample_prompts)."""
from ..diffusion.samplers import resolve_sampler
from ..errors import UserError


def model_pixel_multiple(spec):
    """Image sides a model can take: the VAE's downsampling times the UNet's (SD1/2: 8 * 8 = 64, SDXL: 8 * 4)."""
    vae = 2 ** (len(spec.vae["block_out_channels"]) - 1)
    unet = 2 ** (len(spec.unet["block_out_channels"]) - 1)
    return vae * unet


def check_sample_settings(width, height, sampler, spec, where):
    """UserError naming `where` (the option or prompt) when the size or sampler cannot be used with `spec`."""
    multiple = model_pixel_multiple(spec)
    if width % multiple or height % multiple:
        raise UserError(f"{where}: image size {width}x{height} does not fit the {spec.name} model, whose image "
                        f"sides must be multiples of {multiple}")
    try:
        resolve_sampler(sampler)
    except UserError as e:
        raise UserError(f"{where}: {e}") from e
