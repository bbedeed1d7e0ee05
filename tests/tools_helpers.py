"""Shared by tests/test_tools_*.py: tiny checkpoints, LoRA files on the trainer's own modules, and torch
(diffusers / transformers) models holding a checkpoint's weights, the reference the tools are checked against."""
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, \
    UNet2DConditionModel

from library.checkpoints.components import read_model_components
from library.checkpoints.tiny import ensure_tiny_checkpoint
from library.formats.lora import lora_metadata, save_lora
from library.networks.extract import lora_targets
from library.text.tokenizer import load_clip_tokenizer

BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def tiny_model(folder, spec_name, seed=0):
    """(path, ModelComponents) of a seeded tiny single-file checkpoint."""
    path = ensure_tiny_checkpoint(spec_name, folder / f"{spec_name}-{seed}.safetensors", seed=seed)
    return path, read_model_components(path)


_TARGETS = {}


def targets_of(spec):
    """kohya's LoRA modules (with conv) of a spec, built once per spec."""
    if spec.name not in _TARGETS:
        _TARGETS[spec.name] = lora_targets(spec, with_conv=True)
    return _TARGETS[spec.name]


def weight_of(model, target):
    part = model.components["unet"] if target.component == "unet" else model.components["text_encoders"][target.index]
    return part[target.key]


def random_lora(path, model, rank=4, conv_rank=2, seed=0, names=None, metadata=True, varied_alpha=False):
    """A kohya LoRA file with random non-zero factors on kohya's modules of `model` (or those in `names`):
    alpha rank / 2 (3x3 convs: 1), as a trainer writes it, or with varied_alpha a random one per module
    (diffusers 0.42 ignores per-module alphas other than the conv/linear pair). Returns {name: (down, up, alpha)}."""
    rng = np.random.default_rng(seed)
    modules = {}
    for target in targets_of(model.spec):
        if names is not None and target.lora_name not in names:
            continue
        shape = weight_of(model, target).shape
        r = conv_rank if target.is_conv3x3 else rank
        down_shape = (r,) + tuple(shape[1:])
        up_shape = (shape[0], r) + ((1, 1) if len(shape) == 4 else ())
        down = rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), down_shape).astype(np.float32)
        up = rng.normal(0, 0.3, up_shape).astype(np.float32)
        alpha = float(rng.choice([r, r / 2, 1.0])) if varied_alpha else (1.0 if target.is_conv3x3 else rank / 2)
        modules[target.lora_name] = (down, up, alpha)
    return modules_to_file(path, model.spec, modules, metadata)


def modules_to_file(path, spec, modules, metadata=True):
    tensors = {}
    for name, (down, up, alpha) in modules.items():
        tensors[name + ".lora_down.weight"] = down
        tensors[name + ".lora_up.weight"] = up
        tensors[name + ".alpha"] = np.array(alpha, dtype=np.float32)
    values = {"network_module": "networks.lora", "network_dim": 4, "network_alpha": 2.0,
              "base_model_version": BASE_VERSIONS[spec.family], "v2": spec.family == "sd2"} if metadata else {}
    save_lora(path, tensors, lora_metadata(values))
    return modules


def delta(down, up, alpha):
    """The reference delta in torch: alpha / rank * up @ down in the weight's layout."""
    down, up = torch.from_numpy(np.asarray(down, np.float64)), torch.from_numpy(np.asarray(up, np.float64))
    rank = down.shape[0]
    flat = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return (alpha / rank * flat).reshape((up.shape[0],) + tuple(down.shape[1:])).numpy()

# ----------------------------------------------------------------------------------------------- torch models


def _load(module, tensors):
    """Load diffusers/transformers-named arrays (ours keep `text_model.`; transformers 5 drops it)."""
    own = module.state_dict()
    state = {}
    for name, array in tensors.items():
        key = name if name in own else name.removeprefix("text_model.")
        state[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)


def torch_state(module):
    """The module's weights under our names (`text_model.` prefixed text encoders)."""
    out = {}
    for key, value in module.state_dict().items():
        if "position_ids" in key:
            continue
        if isinstance(module, transformers.PreTrainedModel) and not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        out[key] = value.detach().numpy().astype(np.float64)
    return out


def torch_pipeline(spec, components):
    """A diffusers pipeline whose UNet, text encoders and VAE hold `components`."""
    unet = UNet2DConditionModel(**spec.unet)
    _load(unet, components["unet"])
    encoders = []
    for index, config in enumerate(spec.text_encoders):
        cls = transformers.CLIPTextModelWithProjection if spec.family == "sdxl" and index == 1 \
            else transformers.CLIPTextModel
        encoder = cls(transformers.CLIPTextConfig(**config))
        _load(encoder, components["text_encoders"][index])
        encoders.append(encoder)
    vae = AutoencoderKL(**spec.vae)
    _load(vae, components["vae"])
    tokenizers = [load_clip_tokenizer(), load_clip_tokenizer(pad="!")]
    if spec.family == "sdxl":
        return StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                         scheduler=DDIMScheduler())
    return StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def pipeline_parts(pipe):
    """{"unet": ..., "text_encoders": [...]} of a pipeline's weights under our names (float64)."""
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if hasattr(pipe, "text_encoder_2") else [])
    return {"unet": torch_state(pipe.unet), "text_encoders": [torch_state(e) for e in encoders]}


def fuse(pipe, path, scale):
    """diffusers: load one LoRA file, fuse it at `scale`, drop the adapter (its change stays in the weights)."""
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()


def assert_close(ours, reference, label, rtol=1e-5):
    """max |ours - reference| <= rtol * max |reference| (the issue's 1e-5 relative, fp32)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{label}: shape {ours.shape} vs {reference.shape}"
    scale = max(np.abs(reference).max(), 1e-12)
    error = np.abs(ours - reference).max() / scale
    assert error <= rtol, f"{label}: relative error {error:.3g} > {rtol}"
