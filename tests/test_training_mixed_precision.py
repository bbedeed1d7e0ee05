"""--mixed_precision fp16 (trainers) and --fp16 (gen_img) wiring: the UNet and text encoders compute in fp16,
parameters stay fp32 masters, the loss is fp32 and the dynamic loss scale is in the step.

On Ascend/GPU that is what runs; the CPU refuses low precision for speed reasons, so these tests tell the
precision helper the device is an accelerator. The CPU has fp16 (not bf16) kernels, slow but exact enough to
compare with fp32 on the same weights.
"""
import numpy as np
import mindspore as ms
import pytest

import gen_img
from bad_inputs_helpers import expect_failure

from library import device
from library.models.bundle import build_bundle
from library.sampling import cli as gen_cli
from library.sampling.pipeline import Pipeline, SamplingOptions
from library.training.optimizers import build_optimizer
from library.training.step import StepRunner
from test_train_textual_inversion import fixed_batch, make_method


def _three_steps(*extra):
    args, bundle, method = make_method("tiny-sd15", *extra)
    batch, latents, noise, timesteps = fixed_batch(bundle)
    inputs = method.step_inputs(batch, latents, noise, timesteps)
    optimizer = build_optimizer("AdamW", method.param_groups(5e-2), 5e-2, {"weight_decay": 0.0})
    runner = StepRunner(method.objective, optimizer, 1.0, 1, loss_scale=method.loss_scale)
    results = [runner.run(0, inputs) for _ in range(3)]
    return method, bundle, results


def test_fp16_textual_inversion_step_tracks_fp32(monkeypatch):
    method32, _, fp32 = _three_steps()
    assert method32.compute_dtype == ms.float32 and method32.loss_scale is None
    monkeypatch.setattr(device, "is_cpu", lambda: False)
    method16, bundle, fp16 = _three_steps("--mixed_precision", "fp16")
    assert method16.compute_dtype == ms.float16
    unet_linear = bundle.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert unet_linear.mixed_precision_type.name == "FP16"
    assert bundle.text_encoders[0].text_model.encoder.layers[0].mlp.fc1.mixed_precision_type.name == "FP16"
    assert unet_linear.weight.dtype == ms.float32 and method16.trainable["text_encoder_0.new_rows"].dtype == ms.float32
    # the loss scale took part in every step (2^16, no overflow) and came out again
    assert method16.loss_scale.state() == {"scale": 65536.0, "good_steps": 3, "skipped_steps": 0}
    for (loss16, norm16, _), (loss32, norm32, _) in zip(fp16, fp32):
        assert loss16 == pytest.approx(loss32, rel=1e-2)
        assert norm16 == pytest.approx(norm32, rel=5e-2)


def test_gen_img_fp16_keeps_the_vae_fp32_and_tracks_fp32(monkeypatch):
    ms.set_seed(0)
    np.random.seed(0)
    bundle = build_bundle("tiny-sd15")
    options = SamplingOptions(width=64, height=64, steps=4, scale=7.5, sampler="euler")
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    fp32 = Pipeline(bundle)(["a photo of a toy"], ["blurry"], [0], options, initial_latents=latents)

    parser = gen_cli.build_parser()
    args = parser.parse_args(["--ckpt", "unused", "--prompt", "x", "--fp16"])
    monkeypatch.setattr(device, "is_cpu", lambda: False)
    gen_cli._apply_precision(args, bundle)
    assert bundle.unet.conv_in.mixed_precision_type.name == "FP16"
    assert bundle.vae.decoder.conv_in.mixed_precision_type is None
    fp16 = Pipeline(bundle)(["a photo of a toy"], ["blurry"], [0], options, initial_latents=latents)
    assert fp16.dtype == fp32.dtype
    np.testing.assert_allclose(fp16, fp32, atol=2e-2)


def test_gen_img_refuses_fp16_and_bf16_together(tmp_path, capfd):
    out = str(tmp_path / "images")
    expect_failure(gen_img, ["--ckpt", "x.safetensors", "--prompt", "a", "--fp16", "--bf16", "--outdir", out],
                   capfd, ["--fp16", "--bf16"], out)
