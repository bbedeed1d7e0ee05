"""A kohya-layout LoRA file changes our text conditioning exactly as diffusers' load_lora_weights changes its own."""
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from library.formats.lora import save_lora
from library.models.bundle import build_bundle
from library.models.configs import get_spec
from library.models.weights import load_state_dict
from library.sampling.networks import load_networks, set_multipliers
from library.sampling.text_encoding import encode_texts
from library.text.tokenizer import load_clip_tokenizer
from library.networks import create_network

PROMPT = "a photo of a cat wearing a hat"


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    spec = get_spec("tiny-sd15")
    torch.manual_seed(0)
    ref_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoders[0])).eval()
    state = {("text_model." + k if not k.startswith("text_model.") else k): v.detach().numpy()
             for k, v in ref_encoder.state_dict().items() if not k.endswith("position_ids")}
    rng = np.random.default_rng(0)
    network = create_network(build_bundle(spec, with_tokenizers=False), network_dim=4, network_alpha=2.0,
                              train_unet=False)
    tensors = {k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32) if k.endswith("weight") else v
               for k, v in network.state_dict().items()}
    assert all(k.startswith("lora_te_") for k in tensors)
    path = str(root / "te_style.safetensors")
    save_lora(path, tensors)
    found = dict(spec=spec, ref_encoder=ref_encoder, state=state, path=path)
    found["reference"] = _reference(found, 0.8)  # the same for both tests: computed once
    return found


def _reference(setup, multiplier):
    unet = UNet2DConditionModel(**setup["spec"].unet)
    pipe = StableDiffusionPipeline(vae=None, text_encoder=setup["ref_encoder"], tokenizer=load_clip_tokenizer(),
                                   unet=unet, scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with torch.no_grad():
        plain = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0].numpy()
    pipe.load_lora_weights(setup["path"], adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[multiplier])
    with torch.no_grad():
        with_lora = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0].numpy()
    pipe.unload_lora_weights()
    return plain, with_lora


@pytest.mark.parametrize("merge", [False, True])
def test_text_encoder_lora_matches_diffusers(setup, merge):
    plain, expected = setup["reference"]
    bundle = build_bundle(setup["spec"])
    load_state_dict(bundle.text_encoders[0], setup["state"])
    ours_plain, _ = encode_texts(bundle, [PROMPT], num_chunks=1)
    assert _rel(ours_plain, plain) < 1e-4
    networks = load_networks(bundle, [setup["path"]], multipliers=[0.8], merge=merge)
    ours, _ = encode_texts(bundle, [PROMPT], num_chunks=1)
    assert np.abs(expected - plain).max() > 1e-2  # the LoRA has an effect
    assert _rel(ours, expected) < 1e-4
    if not merge:  # --am changes an applied network's multiplier per prompt
        set_multipliers(networks, [0.0])
        off, _ = encode_texts(bundle, [PROMPT], num_chunks=1)
        assert _rel(off, plain) < 1e-4
