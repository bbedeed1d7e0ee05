"""Sample images during training (kohya --sample_prompts / --sample_sampler), named as kohya names them.

`generate_samples(bundle, prompts, output_dir, ...)` writes `output_dir/sample/{output_name_}{e000001|000100}_
{idx:02d}_{YYYYmmddHHMMSS}[_{seed}].png`. Defaults as kohya: 30 steps, CFG 7.5, sampler ddim (with x0
clamping); the default size is the model's own resolution (kohya: 512 whatever the model).
"""
import logging
import random

from ..diffusion.prompt_file import load_prompt_file, resolve_prompt_settings
from ..diffusion.samplers import resolve_sampler
from .checks import check_sample_settings
from .embeddings import expand_prompt
from .pipeline import Pipeline, SamplingOptions, to_uint8
from .png_output import a1111_parameters, sample_file_name, save_png, timestamp

log = logging.getLogger("sdms.sampling")
_PIPELINES = {}  # id(bundle) -> (bundle, Pipeline): the compiled UNet/VAE Cells are reused between calls


def _pipeline(bundle):
    entry = _PIPELINES.get(id(bundle))
    if entry is None or entry[0] is not bundle:
        entry = (bundle, Pipeline(bundle))
        _PIPELINES[id(bundle)] = entry
    return entry[1]


def generate_samples(bundle, prompts, output_dir, *, sampler="ddim", output_name=None, epoch=None, steps=None,
                     clip_skip=None, token_expansions=None, default_seed=None, prompt_rewrite=None):
    """Generate one image per prompt; returns the written paths.

    prompts: a prompt file path (.txt/.toml/.json) or a list of prompt strings / kohya prompt dicts.
    token_expansions: {token string: vectors} so a textual-inversion trigger reads `T T1 ... T{N-1}`.
    default_seed: seeds for prompts without `--d` are drawn from it (random when None, as kohya).
    prompt_rewrite: optional `fn(text) -> text` applied to prompt and negative prompt (the TI trainer's
    token-string expansion).
    """
    if isinstance(prompts, str):
        entries = load_prompt_file(prompts)
    else:
        from ..diffusion.prompt_file import parse_prompt_line

        entries = [parse_prompt_line(p) if isinstance(p, str) else dict(p) for p in prompts]
    rng = random.Random(default_seed)
    pipeline = _pipeline(bundle)
    size = bundle.spec.resolution
    paths = []
    for index, entry in enumerate(entries):
        settings = resolve_prompt_settings(entry, sampler=sampler, width=size, height=size)
        explicit_seed = settings["seed"]
        seed = int(explicit_seed) if explicit_seed is not None else rng.randint(0, 2**31 - 1)
        options = SamplingOptions(width=settings["width"], height=settings["height"],
                                  steps=settings["sample_steps"], scale=settings["scale"],
                                  sampler=settings["sample_sampler"], clip_skip=clip_skip, clip_sample=True)
        prompt = expand_prompt(settings["prompt"], token_expansions)
        negative = expand_prompt(settings["negative_prompt"], token_expansions)
        if prompt_rewrite is not None:
            prompt, negative = prompt_rewrite(prompt), prompt_rewrite(negative) if negative else negative
        image = to_uint8(pipeline([prompt], [negative], [seed], options))[0]
        path = sample_file_name(output_dir, entry.get("enum", index), explicit_seed, output_name=output_name,
                                epoch=epoch, steps=steps, stamp=timestamp())
        parameters = a1111_parameters(settings["prompt"], settings["negative_prompt"], options.steps,
                                      options.sampler, options.scale, seed, options.width, options.height,
                                      clip_skip=clip_skip)
        paths.append(save_png(path, image, {"parameters": parameters, "prompt": settings["prompt"], "seed": seed}))
    return paths


class TrainingSampler:
    """The trainers' `sample_fn(step=, epoch=)`: kohya's --sample_prompts / --sample_sampler / --output_name.

    The prompt file is read (and checked) when training starts; seeds without `--d` come from --seed.
    """

    def __init__(self, args, bundle, prompt_rewrite=None):
        self.args = args
        self.bundle = bundle
        self.prompt_rewrite = prompt_rewrite
        self.prompts = load_prompt_file(args.sample_prompts)
        sampler = getattr(args, "sample_sampler", None) or "ddim"
        resolve_sampler(sampler, option="--sample_sampler")
        size = bundle.spec.resolution
        for entry in self.prompts:  # a bad prompt would otherwise stop the run at its first sample
            settings = resolve_prompt_settings(entry, sampler=sampler, width=size, height=size)
            check_sample_settings(settings["width"], settings["height"], settings["sample_sampler"], bundle.spec,
                                  f"--sample_prompts {args.sample_prompts}: prompt {settings['prompt']!r}")
            if entry.get("negative_scale") is not None:  # kohya's training samples do not read --nl either
                log.warning("--sample_prompts %s: prompt %r: --nl (negative scale) is ignored in training samples, "
                            "as in kohya's trainers; gen_img.py applies it", args.sample_prompts,
                            settings["prompt"])

    def __call__(self, step=None, epoch=None):
        args = self.args
        return generate_samples(self.bundle, self.prompts, getattr(args, "output_dir", None) or ".",
                                sampler=getattr(args, "sample_sampler", None) or "ddim",
                                output_name=getattr(args, "output_name", None), epoch=epoch, steps=step,
                                clip_skip=getattr(args, "clip_skip", None),
                                default_seed=getattr(args, "seed", None), prompt_rewrite=self.prompt_rewrite)
