"""Textual-inversion embeddings at generation time change the conditioning exactly as diffusers' loader does."""
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from library.errors import UserError
from library.formats.embeddings import save_embedding
from library.models.bundle import build_bundle
from library.models.configs import get_spec
from library.models.weights import load_state_dict
from library.sampling.embeddings import expand_prompt, load_embeddings
from library.sampling.text_encoding import apply_weights, encode_texts
from library.text.tokenizer import load_clip_tokenizer


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ti")
    spec = get_spec("tiny-sd15")
    torch.manual_seed(0)
    ref_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoders[0])).eval()
    bundle = build_bundle(spec)
    state = {("text_model." + k if not k.startswith("text_model.") else k): v.detach().numpy()
             for k, v in ref_encoder.state_dict().items() if not k.endswith("position_ids")}
    load_state_dict(bundle.text_encoders[0], state)
    vectors = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    path = str(root / "shiny-toy.safetensors")
    save_embedding(path, "sd1", [vectors], "ignored-inside-name")
    return dict(root=root, spec=spec, ref_encoder=ref_encoder, bundle=bundle, path=path, vectors=vectors)


def test_multi_vector_embedding_matches_diffusers_load_textual_inversion(models):
    bundle = models["bundle"]
    loaded = load_embeddings(bundle, [models["path"]])
    assert loaded == {"shiny-toy": 3}
    prompt = "a photo of shiny-toy on a table"
    assert expand_prompt(prompt, loaded) == "a photo of shiny-toy shiny-toy1 shiny-toy2 on a table"
    ours, _ = encode_texts(bundle, [expand_prompt(prompt, loaded)], num_chunks=1)

    pipe = StableDiffusionPipeline(vae=None, text_encoder=models["ref_encoder"], tokenizer=load_clip_tokenizer(),
                                   unet=None, scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_textual_inversion(models["path"], token="shiny-toy")
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert ours.shape == tuple(expected.shape)
    assert _rel(ours, expected.numpy()) < 1e-4

    plain, _ = encode_texts(bundle, ["a photo of a thing on a table"], num_chunks=1)
    assert np.abs(plain - ours).max() > 1e-3  # the embedding has an effect


def test_embedding_errors_name_the_file(models):
    bundle = build_bundle(models["spec"])
    wrong = str(models["root"] / "wide.safetensors")
    save_embedding(wrong, "sd2", [np.zeros((1, 1024), np.float32)], "wide")
    with pytest.raises(UserError, match="wide.*1024"):
        load_embeddings(bundle, [wrong])
    garbage = models["root"] / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="garbage.safetensors"):
        load_embeddings(bundle, [str(garbage)])
    with pytest.raises(UserError, match="does not exist"):
        load_embeddings(bundle, [str(models["root"] / "missing.safetensors")])


def test_prompt_weights_scale_positions_and_keep_the_mean():
    rng = np.random.default_rng(0)
    context = rng.standard_normal((2, 5, 4)).astype(np.float32) + 0.3
    weights = np.array([[1, 1.2, 1, 0.9, 1], [1, 1, 1, 1, 1]], np.float32)
    out = apply_weights(context, weights)
    assert np.allclose(out.mean(axis=(1, 2)), context.mean(axis=(1, 2)), rtol=1e-5)
    ratio = out[0] / context[0]
    assert np.allclose(ratio[1] / ratio[0], 1.2, rtol=1e-5) and np.allclose(ratio[3] / ratio[0], 0.9, rtol=1e-5)
    assert np.array_equal(out[1], context[1])
