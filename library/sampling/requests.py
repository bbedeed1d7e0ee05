"""Prompts + options -> one request per image, grouped into batches that share their sampling settings."""
import random
from dataclasses import dataclass, field

from ..diffusion.prompt_file import parse_prompt_line
from .pipeline import SamplingOptions

MAX_SEED = 2**32 - 1  # kohya's randint(0, 2**32 - 1)


@dataclass
class ImageRequest:
    prompt: str  # as typed (goes into the PNG); embeddings are expanded later
    negative_prompt: str
    seed: int
    options: SamplingOptions
    network_multipliers: tuple = None  # --am
    filename: str = None  # --f
    extra: dict = field(default_factory=dict)

    def batch_key(self):
        o = self.options
        return (o.width, o.height, o.steps, o.scale, o.negative_scale, o.sampler, o.karras, o.original_size,
                o.original_size_negative, o.crop_top_left, self.network_multipliers)


def seed_source(seed, prompt_count, images_per_prompt):
    """kohya gen_img's seed generator: `--seed N` with one prompt and one image gives exactly N (so the seed
    in the PNG reproduces it, as A1111); with more images N seeds a generator that draws every image's seed;
    without --seed the seeds are random."""
    if seed is not None and prompt_count == 1 and images_per_prompt == 1:
        return lambda: int(seed)
    rng = random.Random(seed)
    return lambda: rng.randint(0, MAX_SEED)


def build_requests(prompt_lines, base: SamplingOptions, images_per_prompt=1, n_iter=1, seed=None,
                   iter_same_seed=False):
    """Expand prompt lines (with in-line options) into per-image requests with kohya's seeds.

    Per image, in kohya's order: the prompt's `--d` seeds, one per image (when they run out, the last one
    repeats); else with --iter_same_seed one seed drawn per iteration (--n_iter) for every prompt; else a
    seed drawn from `seed_source`. The same command gives the same seeds.
    """
    next_seed = seed_source(seed, len(prompt_lines), images_per_prompt)
    requests = []
    for _ in range(n_iter):
        iteration_seed = next_seed() if iter_same_seed else None
        for line in prompt_lines:
            parsed = parse_prompt_line(line) if isinstance(line, str) else dict(line)
            options = _options_for(parsed, base)
            seeds = list(parsed.get("seeds") or ([parsed["seed"]] if parsed.get("seed") is not None else []))
            for i in range(images_per_prompt):
                if seeds:
                    image_seed = int(seeds[min(i, len(seeds) - 1)])
                elif iteration_seed is not None:
                    image_seed = iteration_seed
                else:
                    image_seed = next_seed()
                requests.append(ImageRequest(
                    prompt=parsed.get("prompt", ""), negative_prompt=parsed.get("negative_prompt") or "",
                    seed=image_seed, options=options,
                    network_multipliers=tuple(parsed["network_multipliers"]) if parsed.get(
                        "network_multipliers") else None,
                    filename=parsed.get("filename")))
    return requests


def _options_for(parsed, base):
    width = int(parsed.get("width", base.width))
    height = int(parsed.get("height", base.height))
    original = base.original_size
    if "original_width" in parsed or "original_height" in parsed:
        fallback = original or (height, width)
        original = (int(parsed.get("original_height", fallback[0])), int(parsed.get("original_width", fallback[1])))
    original_negative = base.original_size_negative
    if "original_width_negative" in parsed or "original_height_negative" in parsed:
        fallback = original_negative or original or (height, width)
        original_negative = (int(parsed.get("original_height_negative", fallback[0])),
                             int(parsed.get("original_width_negative", fallback[1])))
    crop = (int(parsed.get("crop_top", base.crop_top_left[0])), int(parsed.get("crop_left", base.crop_top_left[1])))
    # --nl in the prompt replaces --negative_scale (`--nl none` switches it off), as kohya's gen_img
    negative_scale = parsed["negative_scale"] if "negative_scale" in parsed else base.negative_scale
    return SamplingOptions(
        width=max(64, width - width % 8), height=max(64, height - height % 8),
        steps=int(parsed.get("sample_steps", base.steps)), scale=float(parsed.get("scale", base.scale)),
        sampler=parsed.get("sample_sampler") or base.sampler, karras=base.karras, clip_skip=base.clip_skip,
        max_chunks=base.max_chunks, clip_sample=base.clip_sample, original_size=original,
        original_size_negative=original_negative, crop_top_left=crop, zero_terminal_snr=base.zero_terminal_snr,
        negative_scale=None if negative_scale is None else float(negative_scale))


def batches(requests, batch_size):
    """Consecutive requests with the same settings, at most batch_size each (prompt order is kept)."""
    current = []
    for request in requests:
        if current and (len(current) >= batch_size or request.batch_key() != current[0].batch_key()):
            yield current
            current = []
        current.append(request)
    if current:
        yield current
