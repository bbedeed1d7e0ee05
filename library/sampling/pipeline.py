"""Text-to-image for SD1/SD2/SDXL bundles: prompts -> conditioning -> sampler -> VAE decode -> images.

`text_to_image(bundle, prompts, ...)` generates one batch that shares size, steps, scale and sampler (the
CLI groups prompts that way, as kohya's gen_img does). Every image has its own seed: its initial latents
and the ancestral samplers' per-step noise come from its own generator, so an image does not depend on the
batch it was made in.
"""
import logging
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np

from ..diffusion import samplers
from ..diffusion.schedule import make_schedule
from ..errors import UserError
from ..models.bundle import graph_structure_key
from ..models.text_conditioning import size_embedding_inputs
from ..models.vae import VAEDecode
from .compiled import GuidedUNetStep, NegativeScaleUNetStep, run_graph
from .denoiser import make_model_fn
from .text_encoding import DEFAULT_MAX_CHUNKS, count_chunks, encode_prompt_pairs, encode_texts, \
    encode_with_real_uncond

LATENT_FACTOR = 8
log = logging.getLogger("sdms.sampling")


@dataclass
class SamplingOptions:
    """Settings shared by one batch (kohya gen_img names in comments)."""

    width: int = 512  # --W
    height: int = 512  # --H
    steps: int = 50  # --steps
    scale: float = 7.5  # --scale
    sampler: str = "ddim"  # --sampler
    karras: bool = False  # Karras sigmas for the k-samplers and DPM-Solver
    clip_skip: int = None  # --clip_skip
    max_chunks: int = DEFAULT_MAX_CHUNKS  # --max_embeddings_multiples (75 tokens each)
    clip_sample: bool = False  # DDIM clamps x0 to [-1, 1] (kohya's generator sets it)
    original_size: tuple = None  # SDXL (height, width); default = target size
    original_size_negative: tuple = None  # SDXL, for the uncond half; default = original_size
    crop_top_left: tuple = (0, 0)  # SDXL --crop_top / --crop_left
    zero_terminal_snr: bool = False
    negative_scale: float = None  # --negative_scale / --nl: the negative prompt's own guidance scale
    extra: dict = field(default_factory=dict)

    @property
    def guided(self):
        return self.scale > 1.0

    @property
    def guidance(self):
        """"plain" (no CFG), "cfg", or "negative_scale" (kohya: CFG against the empty prompt, the negative
        prompt with its own scale; only with CFG on)."""
        if not self.guided:
            return "plain"
        return "cfg" if self.negative_scale is None else "negative_scale"


class Pipeline:
    """Holds the bundle and its compiled Cells (guided UNet step, VAE decode) across batches.

    Each compiled Cell is keyed on its model's graph_structure_key: a LoRA applied or removed between
    batches gives a new key and a freshly compiled graph, never a stale one.
    """

    def __init__(self, bundle):
        self.bundle = bundle
        self._compiled = {}  # role -> (structure key, Cell)

    @property
    def v_prediction(self):
        return self.bundle.spec.prediction_type == "v_prediction"

    def _cell(self, role, model, build):
        key = graph_structure_key(model)
        entry = self._compiled.get(role)
        if entry is None or entry[0] != key:
            entry = (key, build())  # the previous Cell (and its graph) is dropped
            self._compiled[role] = entry
        return entry[1]

    def unet_step(self, guidance):
        """The compiled UNet step for the UNet as it is now: guidance "plain", "cfg" or "negative_scale" (a
        bool is read as cfg / plain)."""
        if isinstance(guidance, bool):
            guidance = "cfg" if guidance else "plain"
        unet = self.bundle.unet
        if guidance == "negative_scale":
            return self._cell(("unet", guidance), unet, lambda: NegativeScaleUNetStep(unet))
        guided = guidance == "cfg"
        return self._cell(("unet", guided), unet, lambda: GuidedUNetStep(unet, guided))

    def decode(self, latents):
        """Latents (B,4,h,w) -> float images (B,H,W,3) in [0, 1]."""
        vae = self.bundle.vae
        decoder = self._cell("vae_decode", vae, lambda: VAEDecode(vae))
        z = ms.Tensor(np.ascontiguousarray(latents / self.bundle.spec.vae_scaling_factor, dtype=np.float32))
        pixels = run_graph(decoder, z).asnumpy()
        return np.clip(pixels / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

    def conditioning(self, prompts, negative_prompts, options: SamplingOptions):
        """(context, text_embeds or None, time_ids or None) in the layout the UNet step uses: [uncond; cond]
        with CFG, [negative; cond; uncond] with a negative scale, cond alone without guidance."""
        guided = options.guided
        three_parts = options.guidance == "negative_scale"
        chunks = count_chunks(self.bundle, list(prompts) + (list(negative_prompts) if guided else []),
                              options.max_chunks)
        if three_parts:
            context, pooled = encode_with_real_uncond(self.bundle, negative_prompts, prompts, chunks,
                                                      options.clip_skip)
        elif guided:  # negatives and prompts in one text-encoder call
            context, pooled = encode_prompt_pairs(self.bundle, negative_prompts, prompts, chunks, options.clip_skip)
        else:
            context, pooled = encode_texts(self.bundle, prompts, chunks, options.clip_skip)
        time_ids = None
        if self.bundle.spec.family == "sdxl":
            target = (options.height, options.width)
            original = tuple(options.original_size or target)
            time_ids = np.repeat(size_embedding_inputs(original, options.crop_top_left, target), len(prompts), axis=0)
            if guided:
                original_neg = tuple(options.original_size_negative or original)
                neg_ids = np.repeat(size_embedding_inputs(original_neg, options.crop_top_left, target), len(prompts),
                                    axis=0)
                # the empty-prompt part of a negative scale is unconditional too: the negative size inputs
                time_ids = np.concatenate([neg_ids, time_ids] + ([neg_ids] if three_parts else []))
        return context, pooled, time_ids

    def latents(self, prompts, negative_prompts, seeds, options: SamplingOptions, initial_latents=None):
        """Sample latents for a batch (before VAE decoding)."""
        if len(prompts) != len(seeds) or len(prompts) != len(negative_prompts):
            raise ValueError("prompts, negative prompts and seeds must have the same length")
        width, height = int(options.width), int(options.height)
        if width % LATENT_FACTOR or height % LATENT_FACTOR:
            raise UserError(f"image size {width}x{height}: width and height must be multiples of 8")
        if options.negative_scale is not None and not options.guided:
            log.warning("negative scale %s is ignored: the CFG scale %s is <= 1 (no guidance), as in kohya's "
                        "gen_img", options.negative_scale, options.scale)
        context, pooled, time_ids = self.conditioning(prompts, negative_prompts, options)
        guidance = options.guidance
        model = make_model_fn(self.unet_step(guidance), context, options.scale, pooled, time_ids,
                              negative_scale=options.negative_scale if guidance == "negative_scale" else None)
        noise = samplers.PerImageNoise(seeds)
        shape = (len(prompts), self.bundle.spec.unet.get("in_channels", 4),
                 height // LATENT_FACTOR, width // LATENT_FACTOR)
        start = noise(shape) if initial_latents is None else np.asarray(initial_latents, np.float32)
        schedule = make_schedule(zero_terminal_snr=options.zero_terminal_snr)
        return samplers.sample(options.sampler, model, start, schedule, options.steps,
                               v_prediction=self.v_prediction, karras=options.karras, noise_fn=noise,
                               clip_sample=options.clip_sample)

    def __call__(self, prompts, negative_prompts, seeds, options: SamplingOptions, initial_latents=None):
        """Float images (B, H, W, 3) in [0, 1]."""
        return self.decode(self.latents(prompts, negative_prompts, seeds, options, initial_latents))


def text_to_image(bundle, prompts, negative_prompts=None, seeds=None, options=None, initial_latents=None):
    """One-shot helper: uint8 images (B, H, W, 3). For many batches keep a `Pipeline` (compiled once)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    negative_prompts = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    images = Pipeline(bundle)(prompts, negative_prompts, seeds, options or SamplingOptions(), initial_latents)
    return to_uint8(images)


def to_uint8(images):
    return np.round(images * 255.0).astype(np.uint8)
