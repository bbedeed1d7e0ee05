"""tools/ resize_lora, merge_lora, svd_merge_lora, extract_lora_from_models against independent references:
diffusers' load_lora_weights + fuse_lora on tiny SD1 / SD2 / SDXL pipelines, and SVDs done here in torch
(float64) following kohya's code (rank choice, U S / Vh split, quantile clamp)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from library.checkpoints.components import read_model_components, write_checkpoint
from library.formats.lora import read_lora_file
from library.formats.safetensors_io import read_safetensors
from library.networks.lora_files import read_lora_modules
from library.networks.merging import merge_svd
from library.networks.resize import resize_modules
from tools_helpers import (assert_close, delta, fuse, pipeline_parts, random_lora, targets_of, tiny_model,
                                 torch_pipeline, weight_of)
from tools import extract_lora_from_models, merge_lora, resize_lora, svd_merge_lora

SPECS = {"sd1": "tiny-sd15", "sd2": "tiny-sd21", "sdxl": "tiny-sdxl"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {family: tiny_model(folder, name) for family, name in SPECS.items()}


# ----------------------------------------------------------------------------------------------- references
def torch_svd(matrix):
    """Full SVD in float64 with kohya's layout, each pair's sign fixed (largest |u| entry positive)."""
    u, s, vh = torch.linalg.svd(torch.from_numpy(np.asarray(matrix, np.float64)), full_matrices=False)
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1
    return (u * signs).numpy(), s.numpy(), (vh * signs[:, None]).numpy()


def truncation(matrix, rank):
    u, s, vh = torch_svd(matrix)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def kohya_rank(s, method, param, max_rank):
    """kohya resize_lora.rank_resize's rank (index_sv_* + 1, capped; 1 for a zero matrix)."""
    count = len(s)
    if method == "sv_ratio":
        index = int(np.sum(s > s[0] / param))
    elif method == "sv_cumulative":
        index = int(np.searchsorted(np.cumsum(s) / s.sum(), param)) + 1
    else:
        squared = s ** 2
        index = int(np.searchsorted(np.cumsum(squared) / squared.sum(), param ** 2)) + 1
    rank = max(1, min(index, count - 1)) + 1
    return 1 if s[0] <= 1e-6 else min(rank, max_rank)


def flat(array):
    return np.asarray(array, np.float64).reshape(array.shape[0], -1)


# ----------------------------------------------------------------------------------------------- merge into a model
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_merged_checkpoint_equals_diffusers_fuse_lora(models, tmp_path, family):
    path, model = models[family]
    # two LoRAs in sequence on SD1; one (the same code path) for the others, to keep the test short
    loras = [(tmp_path / "a.safetensors", 0.7, 4, 2), (tmp_path / "b.safetensors", -0.4, 3, 1)]
    loras = loras if family == "sd1" else loras[1:]
    for seed, (lora, _, rank, conv_rank) in enumerate(loras):
        random_lora(lora, model, rank=rank, conv_rank=conv_rank, seed=seed + 1)
    out = tmp_path / "merged.safetensors"
    assert merge_lora.main(["--sd_model", str(path), "--models"] + [str(p) for p, *_ in loras] + ["--ratios"]
                           + [str(r) for _, r, *_ in loras] + ["--save_to", str(out)]) == 0

    pipe = torch_pipeline(model.spec, model.components)
    for lora, ratio, *_ in loras:
        fuse(pipe, lora, ratio)
    reference = pipeline_parts(pipe)
    merged = read_model_components(out)
    assert merged.spec.family == family
    pairs = [("unet", merged.components["unet"], reference["unet"])]
    pairs += [(f"te{i}", ours, theirs) for i, (ours, theirs) in
              enumerate(zip(merged.components["text_encoders"], reference["text_encoders"]))]
    changed = 0
    for label, ours, theirs in pairs:
        assert set(ours) == set(theirs), label
        for key in ours:
            assert_close(ours[key], theirs[key], f"{label}.{key}")
        before = model.components["unet"] if label == "unet" else model.components["text_encoders"][int(label[2:])]
        changed += sum(not np.array_equal(before[k], ours[k]) for k in ours)
    assert changed >= len(targets_of(model.spec))  # every module's weight moved

    # the file keeps the original's layout: same keys and shapes, untouched tensors bit for bit
    original, _ = read_safetensors(path)
    written, metadata = read_safetensors(out)
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in original.items()}
    for key in [k for k in original if k.startswith("first_stage_model.")] + \
               [k for k in original if ".resblocks.3." in k]:  # VAE; SD2's OpenCLIP layer diffusers lacks
        assert np.array_equal(written[key], original[key]), key
    assert metadata["modelspec.merged_from"] == ", ".join([Path(path).stem] + [p.stem for p, *_ in loras])


# ----------------------------------------------------------------------------------------------- resize
def test_resize_keeps_svd_ranks_and_norms_and_diffusers_sees_the_truncation(models, tmp_path, capsys):
    path, model = models["sd1"]
    source = tmp_path / "r8.safetensors"
    modules = random_lora(source, model, rank=8, conv_rank=4, seed=3)
    out = tmp_path / "r3.safetensors"
    assert resize_lora.main(["--model", str(source), "--save_to", str(out), "--new_rank", "3",
                             "--new_conv_rank", "2", "--verbose"]) == 0
    printed = capsys.readouterr().out
    resized, metadata = read_lora_file(out)
    _, reports = resize_modules(read_lora_modules(source)[0], 3, 2)
    by_name = {r.name: r for r in reports}
    for name, (down, up, alpha) in modules.items():
        matrix = flat(up) @ flat(down)
        _, s, _ = torch_svd(matrix)
        rank = min(2 if down.ndim == 4 else 3, down.shape[0])  # kohya: every conv uses --new_conv_rank
        assert resized[name + ".lora_down.weight"].shape[0] == rank, name
        report = by_name[name]
        assert report.new_rank == rank
        assert abs(report.fro_retained - np.sqrt((s[:rank] ** 2).sum() / (s ** 2).sum())) < 1e-6
        assert abs(report.sum_retained - s[:rank].sum() / s.sum()) < 1e-6
        assert f"{name:75} | sum(S) retained: {report.sum_retained:.1%}, fro retained: " in printed
        ours = delta(resized[name + ".lora_down.weight"], resized[name + ".lora_up.weight"],
                     float(resized[name + ".alpha"]))
        assert_close(flat(ours), alpha / down.shape[0] * truncation(matrix, rank), name)
    assert "Average Frobenius norm retention:" in printed
    assert metadata["ss_network_dim"] == "3" and metadata["ss_training_comment"].startswith(
        "dimension is resized from 8 to 3 (conv: 2); ")

    pipe = torch_pipeline(model.spec, model.components)
    fuse(pipe, out, 1.0)
    fused = pipeline_parts(pipe)
    for target in targets_of(model.spec):
        down, up, alpha = modules[target.lora_name]
        rank = min(2 if down.ndim == 4 else 3, down.shape[0])
        expected = weight_of(model, target) + (alpha / down.shape[0] * truncation(flat(up) @ flat(down), rank)
                                               ).reshape((up.shape[0],) + down.shape[1:])
        part = fused["unet"] if target.component == "unet" else fused["text_encoders"][target.index]
        assert_close(part[target.key], expected, target.lora_name)


@pytest.mark.parametrize("method,param", [("sv_ratio", 3.0), ("sv_fro", 0.8), ("sv_cumulative", 0.7)])
def test_dynamic_resize_ranks_follow_kohya(models, tmp_path, method, param):
    _, model = models["sd1"]
    source = tmp_path / "r8.safetensors"
    modules = random_lora(source, model, rank=8, conv_rank=8, seed=4, varied_alpha=True)
    resized, reports = resize_modules(read_lora_modules(source)[0], 6, 6, method, param)
    for report in reports:
        down, up, _ = modules[report.name]
        _, s, _ = torch_svd(flat(up) @ flat(down))
        rank = kohya_rank(s, method, param, 6)
        assert report.new_rank == min(rank, 8), report.name
        assert report.unchanged == (rank >= 8)


def test_resize_to_a_rank_not_below_leaves_modules_unchanged(models, tmp_path):
    _, model = models["sd1"]
    source = tmp_path / "r4.safetensors"
    random_lora(source, model, rank=4, conv_rank=2, seed=5)
    out = tmp_path / "same.safetensors"
    assert resize_lora.main(["--model", str(source), "--save_to", str(out), "--new_rank", "4"]) == 0
    before, after = read_safetensors(source)[0], read_safetensors(out)[0]
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------- LoRA + LoRA
def test_svd_merge_is_the_truncated_sum_and_clamps_like_kohya(models, tmp_path):
    _, model = models["sd1"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first = random_lora(a, model, rank=4, conv_rank=2, seed=6, varied_alpha=True)
    second = random_lora(b, model, rank=3, conv_rank=3, seed=7, varied_alpha=True)
    out = tmp_path / "svd.safetensors"
    assert svd_merge_lora.main(["--models", str(a), str(b), "--ratios", "0.6", "0.9", "--new_rank", "5",
                                "--new_conv_rank", "2", "--clamp_quantile", "1", "--save_to", str(out)]) == 0
    merged, metadata = read_lora_file(out)
    sums = {}
    for name in first:
        total = 0.6 * flat(delta(*first[name])) + 0.9 * flat(delta(*second[name]))
        shape = first[name][0].shape
        rank = min(2 if len(shape) == 4 and shape[2:] != (1, 1) else 5, first[name][1].shape[0], shape[1])
        ours = delta(merged[name + ".lora_down.weight"], merged[name + ".lora_up.weight"],
                     float(merged[name + ".alpha"]))
        assert_close(flat(ours), truncation(total, rank), name)
        sums[name] = (total, rank)
    assert metadata["ss_network_dim"] == "5" and json.loads(metadata["ss_network_args"])["conv_dim"] == 2

    # kohya's default clamp: U S and Vh clipped at +-(0.99 quantile of all their entries)
    loras = [(read_lora_modules(a)[0], 0.6, "a"), (read_lora_modules(b)[0], 0.9, "b")]
    clamped = merge_svd(loras, 5, 2, clamp_quantile=0.99)
    for name, (total, rank) in sums.items():
        u, s, vh = torch_svd(total)
        up, down = u[:, :rank] * s[:rank], vh[:rank]
        high = float(torch.quantile(torch.from_numpy(np.concatenate([up.ravel(), down.ravel()])), 0.99))
        assert_close(flat(clamped[name].up), np.clip(up, -high, high), name + " up")
        assert_close(flat(clamped[name].down), np.clip(down, -high, high), name + " down")


def test_concat_merge_is_exactly_the_sum_and_kohya_merge_sums_factors(models, tmp_path):
    _, model = models["sd1"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first = random_lora(a, model, rank=4, conv_rank=2, seed=8, varied_alpha=True)
    second = random_lora(b, model, rank=4, conv_rank=2, seed=9, varied_alpha=True)
    concat, plain = tmp_path / "concat.safetensors", tmp_path / "plain.safetensors"
    common = ["--models", str(a), str(b), "--ratios", "0.5", "-1.5"]
    assert merge_lora.main(common + ["--concat", "--shuffle", "--save_to", str(concat)]) == 0
    assert merge_lora.main(common + ["--save_to", str(plain), "--no_metadata"]) == 0
    merged, _ = read_lora_file(concat)
    summed, metadata = read_lora_file(plain)
    for name in first:
        expected = 0.5 * delta(*first[name]) - 1.5 * delta(*second[name])
        ours = delta(merged[name + ".lora_down.weight"], merged[name + ".lora_up.weight"],
                     float(merged[name + ".alpha"]))
        assert_close(ours, expected, name)
        assert merged[name + ".lora_down.weight"].shape[0] == 2 * first[name][0].shape[0]
        # kohya merge_lora.py: down * sqrt(alpha / base_alpha) * ratio, up * |that|, the first file's alpha
        (d1, u1, alpha1), (d2, u2, alpha2) = first[name], second[name]
        s1, s2 = 0.5, np.sqrt(alpha2 / alpha1) * -1.5
        assert_close(summed[name + ".lora_down.weight"], d1 * s1 + d2 * s2, name + " down")
        assert_close(summed[name + ".lora_up.weight"], u1 * abs(s1) + u2 * abs(s2), name + " up")
        assert float(summed[name + ".alpha"]) == np.float32(alpha1)
    assert "modelspec.title" not in metadata and metadata["ss_network_module"] == "networks.lora"


# ----------------------------------------------------------------------------------------------- extract
def _tuned(model, path, deltas):
    """`model` with known deltas added to the named modules' weights, written as a single file."""
    targets = {t.lora_name: t for t in targets_of(model.spec)}
    components = {"unet": dict(model.components["unet"]), "vae": model.components["vae"],
                  "text_encoders": [dict(e) for e in model.components["text_encoders"]]}
    for name, change in deltas.items():
        target = targets[name]
        part = components["unet"] if target.component == "unet" else components["text_encoders"][target.index]
        part[target.key] = (part[target.key] + change).astype(np.float32)
    tuned = type(model)(path, model.spec, components, model.original, model.metadata, model.logit_scales)
    write_checkpoint(path, tuned.single_file_tensors(), model.spec)


def _low_rank_deltas(model, names, rank, scale, seed):
    rng = np.random.default_rng(seed)
    targets = {t.lora_name: t for t in targets_of(model.spec)}
    deltas = {}
    for name in names:
        shape = weight_of(model, targets[name]).shape
        left = rng.normal(0, scale, (shape[0], rank))
        right = rng.normal(0, 1.0, (rank, int(np.prod(shape[1:]))))
        deltas[name] = (left @ right).reshape(shape)
    return deltas


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_extracted_lora_reproduces_a_known_low_rank_delta(models, tmp_path, family):
    path, model = models[family]
    names = [t.lora_name for t in targets_of(model.spec)]
    unet_names = [n for n in names if n.startswith("lora_unet_")]
    chosen = [n for n in unet_names if n.endswith("attn1_to_q")][:1] + [n for n in unet_names if "conv1" in n][:1]
    chosen += [n for n in unet_names if n.endswith("proj_in")][:1] + [n for n in names if n.endswith("q_proj")][:1]
    deltas = _low_rank_deltas(model, chosen, rank=2, scale=0.1, seed=10)
    tuned = tmp_path / "tuned.safetensors"
    _tuned(model, tuned, deltas)
    out = tmp_path / "extracted.safetensors"
    assert extract_lora_from_models.main(["--model_org", str(path), "--model_tuned", str(tuned), "--save_to",
                                          str(out), "--dim", "4", "--conv_dim", "3", "--clamp_quantile", "1"]) == 0
    extracted, metadata = read_lora_file(out)
    assert {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in extracted} == set(names)
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in extracted)
    for name in names:
        down, up = extracted[name + ".lora_down.weight"], extracted[name + ".lora_up.weight"]
        ours = delta(down, up, float(extracted[name + ".alpha"]))
        if name in deltas:
            assert_close(ours, deltas[name], name, rtol=1e-4)
        else:
            assert np.abs(ours).max() == 0, name
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4.0"
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "3.0"}
    assert metadata["modelspec.architecture"].endswith("/lora") and "sshs_model_hash" in metadata


def test_extraction_leaves_out_text_encoders_below_min_diff(models, tmp_path):
    path, model = models["sd1"]
    names = [t.lora_name for t in targets_of(model.spec)]
    deltas = _low_rank_deltas(model, [names[0]], rank=1, scale=1e-5, seed=11)  # a text-encoder module
    deltas.update(_low_rank_deltas(model, [n for n in names if n.endswith("attn2_to_k")][:1], 1, 0.1, 12))
    tuned = tmp_path / "tuned.safetensors"
    _tuned(model, tuned, deltas)
    out = tmp_path / "unet_only.safetensors"
    assert extract_lora_from_models.main(["--model_org", str(path), "--model_tuned", str(tuned), "--save_to",
                                          str(out), "--no_metadata"]) == 0
    extracted, metadata = read_lora_file(out)
    assert names[0].startswith("lora_te_") and not any(k.startswith("lora_te") for k in extracted)
    assert "modelspec.title" not in metadata and metadata["ss_base_model_version"] == "sd_v1"


# ----------------------------------------------------------------------------------------------- writing back
def test_written_back_file_keeps_conv_shaped_projections_and_legacy_text_names(models):
    """Files of other writers: SD2 proj_in/proj_out stored as [C, C, 1, 1], SD1 text keys without
    `text_model.`; a changed weight lands under the file's own key and shape, nothing else moves."""
    from library.checkpoints.layout import split_single_file, update_single_file

    _, sd2 = models["sd2"]
    original = {k: (v.reshape(v.shape + (1, 1)) if k.endswith(("proj_in.weight", "proj_out.weight")) else v)
                for k, v in sd2.original.items()}
    components, unexpected, extras = split_single_file(original, sd2.spec)
    assert not unexpected
    key = next(k for k in components["unet"] if k.endswith("attentions.0.proj_in.weight"))
    components["unet"][key] = components["unet"][key] + 1.0
    written = update_single_file(original, components, sd2.spec, extras["logit_scale"])
    changed = [k for k in original if not np.array_equal(written[k], original[k])]
    assert len(changed) == 1 and changed[0].endswith("proj_in.weight") and written[changed[0]].ndim == 4
    assert np.array_equal(written[changed[0]], original[changed[0]] + 1.0)

    _, sd1 = models["sd1"]
    prefix = "cond_stage_model.transformer."
    legacy = {(prefix + k[len(prefix + "text_model."):] if k.startswith(prefix + "text_model.") else k): v
              for k, v in sd1.original.items()}
    components, _, extras = split_single_file(legacy, sd1.spec)
    name = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    components["text_encoders"][0][name] = components["text_encoders"][0][name] * 2
    written = update_single_file(legacy, components, sd1.spec, extras["logit_scale"])
    assert written.keys() == legacy.keys()
    changed = [k for k in legacy if not np.array_equal(written[k], legacy[k])]
    assert changed == [prefix + "encoder.layers.0.self_attn.q_proj.weight"]
