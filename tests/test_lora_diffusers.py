"""Our LoRA files load in diffusers (`load_lora_weights`) and diffusers' fused weights equal our merged ones.

Tiny SD1 and SDXL pipelines with random weights; our Cells get the same weights by name (diffusers names), a
LoRA with non-zero up weights (incl. 3x3 conv LoRA) is saved in kohya's layout, diffusers converts and fuses it,
and every UNet / text-encoder weight must match our `merge_into_base` result.
"""
import numpy as np
import pytest
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from mindspore import Tensor

from library.formats.lora import lora_metadata, lora_modelspec, read_lora_file, save_lora
from library.models.bundle import build_text_encoders
from library.models.configs import get_spec
from library.models.layers import lazy_parameters
from library.models.unet import UNet2DConditionModel as OurUNet
from library.models.weights import load_state_dict, state_dict
from library.networks import LoRANetwork
from library.text.tokenizer import load_clip_tokenizer


def _torch_parts(spec):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec.unet)
    encoders = []
    for index, config in enumerate(spec.text_encoders):
        cls = transformers.CLIPTextModelWithProjection if index == 1 else transformers.CLIPTextModel
        encoders.append(cls(transformers.CLIPTextConfig(**config)))
    return unet, encoders


def _torch_state(module):
    """diffusers/transformers names; transformers 5 drops CLIPTextModel's `text_model.` prefix, ours keeps it."""
    out = {}
    for key, value in module.state_dict().items():
        if "position_ids" in key:
            continue
        if isinstance(module, transformers.PreTrainedModel) and not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        out[key] = value.detach().numpy().copy()
    return out


def _ours_like(spec, torch_unet, torch_encoders):
    with lazy_parameters():
        unet = OurUNet(spec.unet)
        encoders = build_text_encoders(spec)
    for ours, theirs in [(unet, torch_unet)] + list(zip(encoders, torch_encoders)):
        load_state_dict(ours, _torch_state(theirs))
    return unet, encoders


def _randomise_up(network, rng):
    for module in network.modules:
        shape = module.lora_up.weight.shape
        module.lora_up.weight.set_data(Tensor((0.2 * rng.standard_normal(shape)).astype(np.float32)))


def _compare(ours, theirs, label):
    theirs = _torch_state(theirs)
    ours = state_dict(ours)
    assert set(ours) == set(theirs), f"{label}: parameter names differ"
    for key in ours:
        scale = np.abs(theirs[key]).max() + 1e-12
        assert np.abs(ours[key] - theirs[key]).max() / scale <= 1e-4, f"{label}.{key} differs after fusing"


@pytest.mark.parametrize("spec_name", ["tiny-sd15", "tiny-sdxl"])
def test_diffusers_loads_our_file_and_fuses_to_our_merged_weights(tmp_path, spec_name):
    spec = get_spec(spec_name)
    torch_unet, torch_encoders = _torch_parts(spec)
    unet, encoders = _ours_like(spec, torch_unet, torch_encoders)
    original = {k: v.copy() for k, v in state_dict(unet).items()}

    network = LoRANetwork(unet, encoders, spec.family, spec.unet, network_dim=4, network_alpha=2.0, conv_dim=2,
                          conv_alpha=1.0, seed=0)
    _randomise_up(network, np.random.default_rng(1))
    path = tmp_path / "lora.safetensors"
    metadata = lora_metadata({"network_module": "networks.lora", "network_dim": 4, "network_alpha": 2.0})
    metadata.update(lora_modelspec(spec.family, title="t"))
    save_lora(path, network.state_dict(), metadata)
    keys = set(read_lora_file(path)[0])
    if spec.family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
        assert any(k.startswith("lora_te2_") for k in keys)

    multiplier = 0.7
    network.merge_into_base(multiplier)
    changed = [k for k, v in state_dict(unet).items() if not np.array_equal(v, original[k])]
    assert any("resnets" in k and "conv1" in k for k in changed) and any("to_q" in k for k in changed)

    tokenizers = [load_clip_tokenizer(), load_clip_tokenizer(pad="!")]
    vae = AutoencoderKL(**spec.vae)
    if spec.family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=torch_encoders[0], text_encoder_2=torch_encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=torch_unet,
                                         scheduler=DDIMScheduler())
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=torch_encoders[0], tokenizer=tokenizers[0],
                                       unet=torch_unet, scheduler=DDIMScheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors")
    pipe.fuse_lora(lora_scale=multiplier)
    pipe.unload_lora_weights()

    _compare(unet, pipe.unet, "unet")
    for index, (ours, theirs) in enumerate(zip(encoders, torch_encoders)):
        _compare(ours, theirs, f"text_encoder{index}")
