"""tools/ convert_embedding, inspect_embedding, show_metadata, check_lora_weights, and what every tool does
with bad input: converted embeddings round-trip bit for bit and load in diffusers' load_textual_inversion with
the same vectors; inspection matches torch computations; one `error:` line and no file for each mistake."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_inputs_helpers import expect_failure
from library.formats.embeddings import save_embedding
from library.formats.lora import save_lora
from library.formats.safetensors_io import Bf16Tensor, read_header, read_safetensors, write_safetensors
from library.formats.torch_zip import read_torch_file, write_torch_file
from tools import (check_lora_weights, convert_embedding, extract_lora_from_models, inspect_embedding, merge_lora,
                   resize_lora, show_metadata, svd_merge_lora)
from tools_helpers import delta, random_lora, tiny_model, torch_pipeline

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("resize_lora", "merge_lora", "svd_merge_lora", "extract_lora_from_models", "show_metadata",
         "check_lora_weights", "convert_embedding", "inspect_embedding")


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models"), "tiny-sd15")


def _vectors(rng, rows, dim):
    return rng.normal(0, 0.05, (rows, dim)).astype(np.float32)


def _stored(path):
    """{name: (dtype, raw bytes)} of the tensors in a .safetensors or .pt file, as stored."""
    if path.suffix == ".safetensors":
        tensors = read_safetensors(path, bf16_as_float32=False)[0]
    else:
        data = read_torch_file(path, bf16_as_float32=False)
        data = data["string_to_param"] if "string_to_param" in data else data
        tensors = {k: v for k, v in data.items() if isinstance(v, (np.ndarray, Bf16Tensor))}
    out = {}
    for name, value in tensors.items():
        array = value.bits if isinstance(value, Bf16Tensor) else value
        out[name] = ("bf16" if isinstance(value, Bf16Tensor) else str(array.dtype), array.tobytes())
    return out


# ----------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_embedding_round_trips_are_bit_exact(tmp_path, precision):
    rng = np.random.default_rng(0)
    sd = tmp_path / "mytoy.safetensors"
    xl = tmp_path / "xl.pt"
    save_embedding(sd, "sd1", [_vectors(rng, 3, 32)], "mytoy", save_precision=precision)
    save_embedding(xl, "sdxl", [_vectors(rng, 2, 32), _vectors(rng, 2, 64)], "xl", save_precision=precision)
    chains = [(sd, ["a.pt", "b.bin", "c.safetensors"], None), (sd, ["d.safetensors"], "diffusers"),
              (xl, ["e.safetensors", "f.pt"], None)]
    for source, names, to in chains:
        current = source
        for name in names:
            argv = [str(current), str(tmp_path / name), "--allow_unsafe_pickle"] + (["--to", to] if to else [])
            assert convert_embedding.main(argv) == 0
            current = tmp_path / name
        back = tmp_path / ("back" + source.suffix)
        assert convert_embedding.main([str(current), str(back), "--allow_unsafe_pickle"]) == 0
        assert _stored(back) == _stored(source), f"{source.name} -> {names} -> back"
        for stored_dtype, _ in _stored(current).values():
            assert stored_dtype == {"fp32": "float32", "fp16": "float16", "bf16": "bf16"}[precision]


def test_converted_embeddings_load_in_diffusers_with_the_same_vectors(sd15, tmp_path):
    _, model = sd15
    rng = np.random.default_rng(1)
    source = tmp_path / "mytoy.safetensors"
    vectors = _vectors(rng, 2, 32)
    save_embedding(source, "sd1", [vectors], "mytoy")
    outputs = {"a1111.pt": [], "learned_embeds.bin": ["--token", "<toy-bin>"],
               "learned_embeds.safetensors": ["--to", "diffusers", "--token", "<toy-st>"]}
    for name, extra in outputs.items():
        assert convert_embedding.main([str(source), str(tmp_path / name)] + extra) == 0
    pipe = torch_pipeline(model.spec, model.components)
    for name, token in [("mytoy.safetensors", "kohya"), ("a1111.pt", None), ("learned_embeds.bin", None),
                        ("learned_embeds.safetensors", None)]:
        pipe.load_textual_inversion(str(tmp_path / name), token=token)
    table = pipe.text_encoder.get_input_embeddings().weight.detach().numpy()
    for word in ("kohya", "mytoy", "<toy-bin>", "<toy-st>"):  # (the A1111 file's `name` is the source's)
        ids = [pipe.tokenizer.convert_tokens_to_ids(t) for t in (word, f"{word}_1")]
        assert np.array_equal(table[ids], vectors), word

    xl = tmp_path / "xl.safetensors"
    pair = [_vectors(rng, 2, 32), _vectors(rng, 2, 64)]
    save_embedding(xl, "sdxl", pair, "xl")
    assert convert_embedding.main([str(xl), str(tmp_path / "xl.pt")]) == 0
    loaded = torch.load(tmp_path / "xl.pt", weights_only=True)
    assert np.array_equal(loaded["clip_l"].numpy(), pair[0]) and np.array_equal(loaded["clip_g"].numpy(), pair[1])


# ----------------------------------------------------------------------------------------------- inspect
def test_inspect_embedding_finds_the_nearest_tokens_and_compares_two(sd15, tmp_path, capsys):
    path, model = sd15
    table = torch_pipeline(model.spec, model.components).text_encoder.get_input_embeddings().weight.detach()
    rng = np.random.default_rng(2)
    vectors = np.stack([2.0 * table[320].numpy(), table[1125].numpy() + 0.001 * rng.normal(size=32)])
    other = _vectors(rng, 3, 32)
    first, second = tmp_path / "near.safetensors", tmp_path / "other.safetensors"
    save_embedding(first, "sd1", [vectors.astype(np.float32)], "near")
    save_embedding(second, "sd1", [other], "other")
    assert inspect_embedding.main([str(first), str(second), "--ckpt", str(path), "--top_k", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    encoder = report["embeddings"][0]["encoders"][0]
    norms = table.norm(dim=1)
    for vector, found in zip(torch.from_numpy(vectors.astype(np.float32)), encoder["vectors"]):
        cosine = torch.nn.functional.cosine_similarity(table, vector[None], dim=1)
        top = torch.topk(cosine, 4)
        assert [n["id"] for n in found["nearest"]] == top.indices.tolist()
        assert np.allclose([n["cosine"] for n in found["nearest"]], top.values.numpy(), atol=1e-6)
        assert abs(found["norm_percentile"] - 100.0 * float((norms < vector.norm()).double().mean())) < 1e-6
    assert [v["nearest"][0]["id"] for v in encoder["vectors"]] == [320, 1125]
    assert encoder["vectors"][0]["nearest"][0]["token"] == "a</w>"
    similarity = np.array(report["similarity"]["encoders"][0]["cosine"])
    expected = torch.nn.functional.cosine_similarity(torch.from_numpy(vectors[:, None].astype(np.float32)),
                                                     torch.from_numpy(other[None]), dim=2).numpy()
    assert np.allclose(similarity, expected, atol=1e-6)
    assert inspect_embedding.main([str(first), "--ckpt", str(path)]) == 0
    assert "nearest: 'a</w>' (1.000)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- LoRA inspection
def test_show_metadata_and_check_lora_weights(sd15, tmp_path, capsys):
    _, model = sd15
    path = tmp_path / "lora.safetensors"
    modules = random_lora(path, model, rank=2, seed=3)
    zero = sorted(modules)[0]
    tensors, metadata = read_safetensors(path)
    tensors[zero + ".lora_up.weight"][:] = 0
    saved = save_lora(path, tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})

    assert show_metadata.main(["--model", str(path)]) == 0  # kohya: the metadata as sorted, indented JSON
    assert capsys.readouterr().out == json.dumps(saved, indent=4, sort_keys=True) + "\n"
    assert show_metadata.main([str(path), "--json", "--hashes"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "LoRA" and report["metadata"] == saved
    infos = read_header(path)[0]
    assert report["tensors"] == {n: {"dtype": i.dtype, "shape": list(i.shape)} for n, i in infos.items()}
    assert report["hashes"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report["hashes"]["sshs_model_hash"]["recomputed"] == saved["sshs_model_hash"]
    assert report["hashes"]["sshs_legacy_hash"]["recomputed"] == saved["sshs_legacy_hash"]

    assert check_lora_weights.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"number of LoRA modules: {2 * len(modules)}"
    rows = {line.split(",")[0]: line.split(",") for line in lines if line.count(",") >= 3}
    for name, (down, up, alpha) in modules.items():
        up = np.zeros_like(up) if name == zero else up
        key = name + ".lora_down.weight"
        assert float(rows[key][2]) == pytest.approx(float(np.abs(down).mean()), rel=1e-6)
        norm = float(np.linalg.norm(delta(down, up, alpha)))
        assert float(rows[name][3]) == pytest.approx(norm, rel=1e-5)
        assert (rows[name][-1] == "ZERO") == (name == zero)
    assert lines[-1] == f"1 of {len(modules)} modules change nothing (all-zero lora_up or lora_down)"


# ----------------------------------------------------------------------------------------------- bad input
def _loha(path):
    """A LyCORIS LoHa file (kohya-style names, hada_ parts)."""
    write_safetensors(path, {"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": np.ones((4, 2), np.float32),
                             "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": np.array(1.0, np.float32)})


def test_bad_input_is_one_error_and_no_file(sd15, tmp_path, capfd):
    path, model = sd15
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    lora = inputs / "lora.safetensors"
    random_lora(lora, model, rank=2, seed=4)
    xl_path, xl_model = tiny_model(inputs, "tiny-sdxl")
    xl_lora = inputs / "xl.safetensors"
    random_lora(xl_lora, xl_model, rank=2, seed=5)
    loha = inputs / "loha.safetensors"
    _loha(loha)
    pickled = inputs / "lora.pt"
    write_torch_file(pickled, read_safetensors(lora)[0])
    emb = inputs / "emb.pt"
    save_embedding(emb, "sd1", [np.ones((1, 32), np.float32)], "emb")
    target = out / "x.safetensors"
    cases = [
        (merge_lora, ["--sd_model", path, "--models", loha, "--ratios", "1", "--save_to", target],
         ["LoHa", "issue 17"]),
        (resize_lora, ["--model", loha, "--save_to", target], ["issue 17"]),
        (merge_lora, ["--models", lora, lora, "--ratios", "1", "--save_to", target], ["--ratios", "2 model(s)"]),
        (resize_lora, ["--model", lora, "--save_to", target, "--new_rank", "0"], ["--new_rank"]),
        (svd_merge_lora, ["--models", lora, "--ratios", "1", "--new_rank", "-2", "--save_to", target],
         ["--new_rank"]),
        (extract_lora_from_models, ["--model_org", path, "--model_tuned", path, "--save_to", target, "--dim", "0"],
         ["--dim"]),
        (resize_lora, ["--model", pickled, "--save_to", target], ["--allow_unsafe_pickle"]),
        (convert_embedding, [emb, target], ["--allow_unsafe_pickle"]),
        (merge_lora, ["--sd_model", path, "--models", xl_lora, "--ratios", "1", "--save_to", target], ["SDXL"]),
        (merge_lora, ["--models", lora, xl_lora, "--ratios", "1", "1", "--save_to", target], ["SDXL", "SD 1.x"]),
        (merge_lora, ["--sd_model", xl_path, "--models", lora, "--ratios", "1", "--save_to", target], ["SDXL"]),
        (merge_lora, ["--sd_model", path, "--models", lora, "--ratios", "1", "--concat", "--save_to", target],
         ["--concat"]),
        (resize_lora, ["--model", lora, "--save_to", out / "x.txt"], ["--save_to"]),
    ]
    for module, argv, names in cases:
        expect_failure(module, argv, capfd, names, output_dir=out)


def test_every_tool_has_help_and_starts_without_mindspore(sd15, tmp_path):
    path, model = sd15
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for tool in TOOLS:
        result = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage:" in result.stdout and "python tools/" in result.stdout, tool
    lora = tmp_path / "l.safetensors"
    random_lora(lora, model, rank=2, seed=6)
    code = ("import sys; from tools import merge_lora, show_metadata; "
            f"merge_lora.main(['--sd_model', {str(path)!r}, '--models', {str(lora)!r}, '--ratios', '1', "
            f"'--save_to', 'm.safetensors']); show_metadata.main(['m.safetensors']); "
            "assert 'mindspore' not in sys.modules, 'a tool imported MindSpore'")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "merge_lora.py"), "--models", "nowhere.safetensors",
                          "--ratios", "1", "--save_to", "x.safetensors"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --models: LoRA file nowhere.safetensors does not exist"]
