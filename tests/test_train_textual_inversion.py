"""Textual inversion: parity of the train step with a torch/diffusers reference, only new rows learn,
loss goes down, files load in diffusers, resume and --weights round trips.

Building a model and compiling its train step dominate the cost, so one trainer per model (module scope)
serves every test; each test first restores the trainer's saved starting state (rows, optimizer state)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from library.models.bundle import build_bundle
from library.models.weights import assign_array, state_dict
from library.text.token_strings import add_token_string, caption_transform
from library.text.chunking import make_tokenize_fn
from library.training import session
from library.training.optimizers import build_optimizer, optimizer_state_params, set_learning_rates
from library.training.state import load_state, save_state
from library.training.step import StepRunner
from library.training.textual_inversion import TextualInversion
import train_textual_inversion as cli


def make_args(*extra):
    parser = session.build_parser("test", False, cli.add_textual_inversion_arguments)
    args = parser.parse_args(["--token_string", "mytoy", "--init_word", "toy", "--num_vectors_per_token", "2",
                              "--seed", "3", "--output_name", "mytoy", *extra])
    return args


def make_method(spec_name, *extra):
    args = make_args(*extra)
    ms.set_seed(0)  # the same random tiny model on every call
    np.random.seed(0)
    bundle = build_bundle(spec_name)
    ids = add_token_string(bundle.tokenizers, "mytoy", 2)
    return args, bundle, TextualInversion(args, bundle, ids)


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """trainers(spec_name): the module's one model + TI method + AdamW step (compiled on first use) for that
    spec. `reset(lr)` restores the starting rows and optimizer state from a saved state folder."""
    built = {}

    def get(spec_name):
        if spec_name not in built:
            args, bundle, method = make_method(spec_name)
            # weight_decay 0: decay would pull the rows and blur the small loss drop the tests look for
            optimizer = build_optimizer("AdamW", method.param_groups(5e-2), 5e-2, {"weight_decay": 0.0})
            runner = StepRunner(method.objective, optimizer, 1.0, 1)
            start = str(tmp_path_factory.mktemp(spec_name) / "start-state")
            save_state(start, method.trainable, optimizer_state_params(optimizer), {"current_step": 0})

            def reset(lr, method=method, optimizer=optimizer, start=start):
                load_state(start, method.trainable, optimizer_state_params(optimizer))
                set_learning_rates(optimizer, [lr] * len(optimizer.lrs))

            built[spec_name] = SimpleNamespace(args=args, bundle=bundle, method=method, optimizer=optimizer,
                                               runner=runner, reset=reset)
        return built[spec_name]

    return get


def fixed_batch(bundle, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    tokenize = make_tokenize_fn(bundle.tokenizers)
    hook = caption_transform("mytoy", 2)
    captions = [hook("a photo of mytoy on a table"), hook("mytoy, close up")]
    size = bundle.spec.unet["sample_size"]
    return {
        "input_ids": tokenize(captions),
        "loss_weights": np.ones(batch, np.float32),
        "original_sizes_hw": np.full((batch, 2), 64), "crop_top_lefts": np.zeros((batch, 2), np.int64),
        "target_sizes_hw": np.full((batch, 2), 64),
    }, rng.standard_normal((batch, 4, size, size)).astype(np.float32), \
        rng.standard_normal((batch, 4, size, size)).astype(np.float32), np.array([100, 700])


def _torch_sd1_loss_and_row_grad(bundle, new_rows, latents, noise, timesteps, ids, weights):
    from diffusers import UNet2DConditionModel, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = bundle.spec
    unet = UNet2DConditionModel(**spec.unet)
    unet.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(bundle.unet).items()})
    te = CLIPTextModel(CLIPTextConfig(**spec.text_encoders[0]))
    # transformers 5 names CLIPTextModel's parameters without the `text_model.` prefix files carry
    te.load_state_dict({k.removeprefix("text_model."): torch.from_numpy(v)
                        for k, v in state_dict(bundle.text_encoders[0]).items() if "new_rows" not in k})
    base = te.get_input_embeddings().weight.detach()
    table = torch.cat([base, torch.from_numpy(new_rows)], 0)
    embedding = torch.nn.Embedding(table.shape[0], table.shape[1], _weight=table)
    te.embeddings.token_embedding = embedding
    context = te(torch.from_numpy(ids.astype(np.int64))).last_hidden_state
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    t = torch.from_numpy(timesteps)
    noisy = sched.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), t)
    pred = unet(noisy, t, context).sample
    loss = (((pred - torch.from_numpy(noise)) ** 2).mean(dim=(1, 2, 3)) * torch.from_numpy(weights)).mean()
    loss.backward()
    return loss.item(), embedding.weight.grad[base.shape[0]:].numpy()


def test_train_step_matches_torch_reference_sd1(trainers):
    trainer = trainers("tiny-sd15")
    trainer.reset(5e-2)
    bundle, method = trainer.bundle, trainer.method
    batch, latents, noise, timesteps = fixed_batch(bundle)
    inputs = method.step_inputs(batch, latents, noise, timesteps)
    params = list(method.trainable.values())
    grad_fn = ms.value_and_grad(method.objective, None, params)
    loss, grads = grad_fn(*inputs)
    ref_loss, ref_grad = _torch_sd1_loss_and_row_grad(bundle, bundle.text_encoders[0].new_token_rows(),
                                                      latents, noise, timesteps, batch["input_ids"][0],
                                                      batch["loss_weights"])
    assert float(loss.asnumpy()) == pytest.approx(ref_loss, rel=1e-4)
    got = grads[0].asnumpy()
    assert np.abs(got - ref_grad).max() <= 1e-4 * np.abs(ref_grad).max()


@pytest.mark.parametrize("spec_name", ["tiny-sd15", "tiny-sdxl"])
def test_loss_goes_down_and_only_new_rows_change(trainers, spec_name):
    trainer = trainers(spec_name)
    trainer.reset(5e-2)
    bundle, method, runner = trainer.bundle, trainer.method, trainer.runner
    trained = {id(p) for p in method.trainable.values()}  # ids: wrapping cells re-prefix parameter names
    frozen_before = {}
    for cell in [bundle.unet, bundle.vae] + bundle.text_encoders:
        frozen_before.update({id(p): p.asnumpy().copy() for p in cell.get_parameters() if id(p) not in trained})
    rows_before = [e.new_token_rows() for e in bundle.text_encoders]
    batch, latents, noise, timesteps = fixed_batch(bundle)
    inputs = method.step_inputs(batch, latents, noise, timesteps)
    losses = [runner.run(0, inputs)[0] for _ in range(25)]
    # a random tiny UNet reacts weakly to the text: the drop is small but must be steady
    assert losses[-1] < losses[0] * 0.998, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 20, losses
    for cell in [bundle.unet, bundle.vae] + bundle.text_encoders:
        for p in cell.get_parameters():
            if id(p) not in trained:
                np.testing.assert_array_equal(p.asnumpy(), frozen_before[id(p)], err_msg=p.name)
    for index, (encoder, before) in enumerate(zip(bundle.text_encoders, rows_before)):
        assert not np.allclose(encoder.new_token_rows(), before), f"text encoder {index + 1} rows did not learn"
    assert len(method.trainable) == len(bundle.text_encoders)


class _DiffusersTextualInversionLoader:
    """diffusers' own TI loader mixin on a bare object (a pipeline needs every component)."""

    def __new__(cls):
        from diffusers.loaders import TextualInversionLoaderMixin

        loader = type("Loader", (TextualInversionLoaderMixin,), {"hf_device_map": None, "components": {}})()
        return loader


def test_saved_embedding_loads_in_diffusers(trainers, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401
    from transformers import CLIPTextConfig, CLIPTextModel
    from library.text.tokenizer import load_clip_tokenizer
    from safetensors.torch import load_file

    for spec_name, ext in (("tiny-sd15", ".safetensors"), ("tiny-sdxl", ".safetensors"), ("tiny-sd15", ".pt")):
        trainer = trainers(spec_name)
        trainer.reset(5e-2)
        bundle, method = trainer.bundle, trainer.method
        path = str(tmp_path / f"mytoy-{spec_name}{ext}")
        method.save(path, step=5, epoch=1)
        ours = [e.new_token_rows() for e in bundle.text_encoders]
        data = load_file(path) if ext == ".safetensors" else torch.load(path, weights_only=True)
        keys = ["clip_l", "clip_g"] if spec_name == "tiny-sdxl" else ["emb_params"]
        for i, key in enumerate(keys):
            tensor = data[key] if key in data else data["string_to_param"]["*"]
            # diffusers' own loader, the way its docs load kohya/A1111 files (SDXL: one call per encoder)
            config = CLIPTextConfig(**bundle.spec.text_encoders[i])
            te = CLIPTextModel(config)
            tok = load_clip_tokenizer(pad="eos" if i == 0 else "!")
            loader = _DiffusersTextualInversionLoader()
            loader.load_textual_inversion(tensor, token="mytoy", text_encoder=te, tokenizer=tok)
            new_ids = tok.convert_tokens_to_ids(["mytoy", "mytoy_1"])
            loaded = te.get_input_embeddings().weight[new_ids].detach().numpy()
            np.testing.assert_allclose(loaded, ours[i], rtol=0, atol=0)


def test_resume_continues_like_an_uninterrupted_run(trainers, tmp_path):
    """4 straight steps == 2 steps, save, (state thrown back to the start), load, 2 steps. The loaded state
    must bring back rows, moments, step count and lr: whatever it missed would keep the start's values."""
    trainer = trainers("tiny-sd15")
    method, runner, optimizer = trainer.method, trainer.runner, trainer.optimizer

    def run(steps):
        return [runner.run(0, inputs_list[k])[0] for k in steps]

    inputs_list = []
    for k in range(4):
        batch, latents, noise, timesteps = fixed_batch(trainer.bundle, seed=k)
        inputs_list.append(method.step_inputs(batch, latents, noise, timesteps))
    trainer.reset(1e-2)
    straight = run(range(4))

    trainer.reset(1e-2)
    first = run(range(2))
    save_state(str(tmp_path / "state"), method.trainable, optimizer_state_params(optimizer), {"current_step": 2})

    trainer.reset(5e-2)  # back to step 0 with another lr: the load has to restore all of it
    assert load_state(str(tmp_path / "state"), method.trainable, optimizer_state_params(optimizer))[
        "current_step"] == 2
    second = run(range(2, 4))
    np.testing.assert_allclose(first + second, straight, rtol=1e-6)


def test_weights_round_trip(trainers, tmp_path):
    trainer = trainers("tiny-sd15")
    trainer.reset(5e-2)
    bundle, method = trainer.bundle, trainer.method
    rows = bundle.text_encoders[0].new_token_rows() + 0.5
    # assign, not set_new_token_rows (set_data): the shared trainer's compiled graphs must see the values
    assign_array(method.trainable["text_encoder_0.new_rows"], rows)
    np.testing.assert_array_equal(bundle.text_encoders[0].new_token_rows(), rows)
    path = str(tmp_path / "start.safetensors")
    method.save(path, step=1, epoch=1)
    _, bundle2, method2 = make_method("tiny-sd15", "--weights", path)
    np.testing.assert_array_equal(bundle2.text_encoders[0].new_token_rows(), rows)
