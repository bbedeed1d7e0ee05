"""gen_img's --negative_scale / in-prompt --nl (kohya's third UNet pass on the empty prompt) and kohya's seed
rules: the compiled step against diffusers' UNet on the same weights with kohya's formula, the CLI end to end
(PNG chunk, --nl none, a reproducible --seed), and the seeds build_requests hands out."""
import glob
import os
import random

import numpy as np
import pytest
import torch
from mindspore import Tensor
from PIL import Image

from library.checkpoints import ensure_tiny_checkpoint
from library.diffusion.prompt_file import parse_prompt_line
from library.models.configs import get_spec
from library.sampling.cli import main
from library.sampling.compiled import GuidedUNetStep, NegativeScaleUNetStep, run_graph
from library.sampling.pipeline import SamplingOptions
from library.sampling.requests import build_requests
from test_unet_parity import our_unet, rel_err, torch_unet

TOLERANCE = 1e-4  # the UNet's own parity with diffusers (test_unet_parity.py); measured 1.0e-5 here


def test_negative_scale_step_matches_kohya_formula_on_diffusers_unet():
    spec = get_spec("tiny-sd15")
    reference = torch_unet(spec, seed=3)
    step = NegativeScaleUNetStep(our_unet(spec, reference))
    rng = np.random.default_rng(0)
    side = spec.sample_size
    x = rng.standard_normal((2, 4, side, side)).astype(np.float32)
    negative, cond, uncond = (rng.standard_normal((2, 77, spec.context_dim)).astype(np.float32) for _ in range(3))
    context = np.concatenate([negative, cond, uncond])
    scale, negative_scale = 7.0, 2.5
    got = run_graph(step, Tensor(x), Tensor(np.array([601.0], np.float32)), Tensor(context),
                    Tensor(np.float32(scale)), Tensor(np.float32(negative_scale))).asnumpy()
    with torch.no_grad():  # kohya gen_img: noise_pred.chunk(3) of [negative, text, uncond]
        out = reference(torch.from_numpy(np.concatenate([x, x, x])), torch.tensor([601.0]),
                        torch.from_numpy(context)).sample
        pred_negative, pred_text, pred_uncond = out.chunk(3)
        expected = (pred_uncond + scale * (pred_text - pred_uncond)
                    - negative_scale * (pred_negative - pred_uncond)).numpy()
    assert got.shape == expected.shape == x.shape
    assert rel_err(got, expected) <= TOLERANCE
    # the combination itself, in numpy on this UNet's own three predictions (the plain, unguided step)
    plain = run_graph(GuidedUNetStep(step.unet, False), Tensor(np.concatenate([x, x, x])),
                      Tensor(np.array([601.0], np.float32)), Tensor(context), Tensor(np.float32(1.0))).asnumpy()
    ours_negative, ours_text, ours_uncond = np.split(plain.astype(np.float64), 3)
    combined = ours_uncond + scale * (ours_text - ours_uncond) - negative_scale * (ours_negative - ours_uncond)
    assert rel_err(got, combined) <= 1e-5


def test_nl_is_parsed_and_overrides_negative_scale():
    assert parse_prompt_line("a cat --nl 1.5")["negative_scale"] == 1.5
    assert parse_prompt_line("a cat --nl None")["negative_scale"] is None
    base = SamplingOptions(negative_scale=4.0)
    scales = [r.options.negative_scale for r in build_requests(["a --nl 2", "b --nl none", "c"], base, seed=1)]
    assert scales == [2.0, None, 4.0]
    assert SamplingOptions(scale=1.0, negative_scale=2.0).guidance == "plain"
    assert SamplingOptions(scale=7.5, negative_scale=2.0).guidance == "negative_scale"


def _seeds(lines, **kwargs):
    return [r.seed for r in build_requests(lines, SamplingOptions(), **kwargs)]


def test_seed_rules_follow_kohya_gen_img():
    # one prompt, one image: --seed N is that image's seed, in every iteration (kohya's fixed seed)
    assert _seeds(["a"], seed=1234) == [1234]
    assert _seeds(["a"], seed=1234, n_iter=3) == [1234, 1234, 1234]
    # several images: --seed seeds the generator that draws each image's seed (Python's random, kohya's range)
    draw = random.Random(7)
    assert _seeds(["a"], seed=7, images_per_prompt=2) == [draw.randint(0, 2**32 - 1) for _ in range(2)]
    draw = random.Random(7)
    assert _seeds(["a", "b"], seed=7) == [draw.randint(0, 2**32 - 1) for _ in range(2)]
    # --iter_same_seed: one seed per iteration, drawn before the prompts
    draw = random.Random(7)
    first, second = draw.randint(0, 2**32 - 1), draw.randint(0, 2**32 - 1)
    assert _seeds(["a", "b"], seed=7, n_iter=2, iter_same_seed=True) == [first, first, second, second]
    # --d seeds one per image; when they run out the last repeats; they draw nothing from the generator
    draw = random.Random(7)
    expected = [5, 6, 6] + [draw.randint(0, 2**32 - 1) for _ in range(3)]
    assert _seeds(["a --d 5,6", "b"], seed=7, images_per_prompt=3) == expected


def _png(path):
    with Image.open(path) as image:
        return dict(image.text), np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nl")
    ckpt = ensure_tiny_checkpoint("tiny-sd15", str(root / "tiny.safetensors"), seed=0)
    prompts = root / "prompts.txt"
    prompts.write_text("a red toy --nl 3 --d 9\na red toy --d 9\na red toy --n blurry --nl 3 --d 9\n"
                       "a red toy --n blurry --d 9\n", encoding="utf-8")
    common = ["--ckpt", ckpt, "--W", "64", "--H", "64", "--steps", "3", "--sampler", "euler", "--scale", "6"]
    assert main(common + ["--from_file", str(prompts), "--outdir", str(root / "file"),
                          "--sequential_file_name"]) == 0
    assert main(common + ["--prompt", "a red toy", "--seed", "9", "--negative_scale", "3", "--outdir",
                          str(root / "seed")]) == 0
    return [_png(p) for p in sorted(glob.glob(str(root / "file" / "*.png")))], \
        [(os.path.basename(p), _png(p)) for p in glob.glob(str(root / "seed" / "*.png"))]


def test_cli_applies_nl_and_records_it(runs):
    (nl_empty, cfg_empty, nl_blurry, cfg_blurry), _ = runs
    # kohya records the negative scale in its own chunk
    assert nl_empty[0]["negative-scale"] == "3.0" and nl_blurry[0]["negative-scale"] == "3.0"
    assert "negative-scale" not in cfg_empty[0] and "negative-scale" not in cfg_blurry[0]
    assert nl_blurry[0]["negative-prompt"] == "blurry"
    # with an empty negative prompt the negative part is the unconditional one: plain CFG, whatever the scale
    assert np.abs(nl_empty[1] - cfg_empty[1]).max() <= 1
    # a real negative prompt: pushed away with its own scale, not used as the unconditional prediction
    assert np.abs(nl_blurry[1] - cfg_blurry[1]).max() > 8
    assert np.abs(nl_blurry[1] - nl_empty[1]).max() > 8


def test_cli_seed_of_one_image_is_the_given_seed(runs):
    (nl_empty, _, _, _), seeded = runs
    ((name, (texts, image)),) = seeded
    assert texts["seed"] == "9" and "Seed: 9," in texts["parameters"] and name.endswith("_000_9.png")
    # --negative_scale on the command line = --nl in the prompt; the printed seed reproduces the image
    assert texts["negative-scale"] == "3.0"
    assert np.abs(image - nl_empty[1]).max() <= 1


def test_training_samples_say_that_nl_is_ignored(tmp_path, caplog):
    import argparse

    from library.models.bundle import build_bundle
    from library.sampling.training_samples import TrainingSampler

    prompts = tmp_path / "samples.txt"
    prompts.write_text("a toy --nl 2 --w 64 --h 64\nplain --w 64 --h 64\n", encoding="utf-8")
    args = argparse.Namespace(sample_prompts=str(prompts), sample_sampler="ddim", output_dir=str(tmp_path),
                              output_name="run", clip_skip=None, seed=1)
    with caplog.at_level("WARNING"):
        TrainingSampler(args, build_bundle("tiny-sd15"))
    ignored = [r.getMessage() for r in caplog.records if "--nl" in r.getMessage()]
    assert len(ignored) == 1 and "'a toy'" in ignored[0] and "ignored in training samples" in ignored[0]
