"""gen_img CLI end to end on a tiny SD1 checkpoint: PNGs with parameters, embeddings, LoRA, clear errors."""
import glob
import os

import numpy as np
import pytest
from PIL import Image

from library.checkpoints import ensure_tiny_checkpoint
from library.errors import UserError, run_cli
from library.formats.embeddings import save_embedding
from library.formats.lora import save_lora
from library.models.bundle import build_bundle
from library.networks import create_network
from library.sampling.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    ckpt = ensure_tiny_checkpoint("tiny-sd15", str(root / "tiny.safetensors"), seed=0)
    rng = np.random.default_rng(0)
    embedding = str(root / "mytoken.safetensors")
    save_embedding(embedding, "sd1", [rng.standard_normal((2, 32)).astype(np.float32)], "mytoken")
    wide = str(root / "wide.safetensors")
    save_embedding(wide, "sd2", [rng.standard_normal((1, 1024)).astype(np.float32)], "wide")
    network = create_network(build_bundle("tiny-sd15", with_tokenizers=False), network_dim=2, network_alpha=1.0)
    tensors = {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32) if k.endswith("weight") else v
               for k, v in network.state_dict().items()}
    lora = str(root / "style.safetensors")
    save_lora(lora, tensors)
    bad_lora = str(root / "bad.safetensors")
    save_lora(bad_lora, {"lora_unet_nothing_here.lora_down.weight": np.zeros((2, 3), np.float32),
                         "lora_unet_nothing_here.lora_up.weight": np.zeros((3, 2), np.float32)})
    return dict(root=root, ckpt=ckpt, embedding=embedding, wide=wide, lora=lora, bad_lora=bad_lora)


def _png_texts(path):
    with Image.open(path) as image:
        return dict(image.text), np.asarray(image.convert("RGB"))


def _run(files, outdir, *extra):
    argv = ["--ckpt", files["ckpt"], "--outdir", str(outdir), "--W", "64", "--H", "64", "--steps", "2",
            "--sequential_file_name", *extra]
    assert main(argv) == 0
    return sorted(glob.glob(os.path.join(str(outdir), "*.png")))


def test_generates_pngs_with_parameters_embeddings_and_lora(files):
    out = files["root"] / "out"
    paths = _run(files, out, "--prompt", "a photo of mytoken --n blurry --d 5,6 --l 4", "--images_per_prompt", "2",
                 "--sampler", "k_euler_a", "--batch_size", "2", "--textual_inversion_embeddings", files["embedding"],
                 "--network_module", "networks.lora", "--network_weights", files["lora"], "--network_mul", "0.7")
    assert [os.path.basename(p) for p in paths] == ["im_000001.png", "im_000002.png"]
    (text1, img1), (text2, img2) = _png_texts(paths[0]), _png_texts(paths[1])
    params = text1["parameters"].split("\n")
    assert params[0] == "a photo of mytoken" and params[1] == "Negative prompt: blurry"
    for field in ("Steps: 2", "Sampler: Euler a", "CFG scale: 4", "Seed: 5", "Size: 64x64", "Model: tiny",
                  "Lora hashes: \"style: ", "TI hashes: \"mytoken: "):
        assert field in params[2]
    assert text1["seed"] == "5" and text2["seed"] == "6" and text1["negative-prompt"] == "blurry"
    assert img1.shape == (64, 64, 3) and np.abs(img1.astype(int) - img2.astype(int)).max() > 0

    # Same seed and settings -> the same image; merging the LoRA gives (nearly) the same image as applying it.
    again = _run(files, files["root"] / "again", "--prompt", "a photo of mytoken --n blurry --d 5 --l 4",
                 "--sampler", "k_euler_a", "--textual_inversion_embeddings", files["embedding"],
                 "--network_weights", files["lora"], "--network_mul", "0.7", "--network_merge")
    assert np.abs(_png_texts(again[0])[1].astype(int) - img1.astype(int)).max() <= 2


def test_embedding_of_another_model_is_a_clear_error(files):
    with pytest.raises(UserError) as err:
        main(["--ckpt", files["ckpt"], "--prompt", "x", "--textual_inversion_embeddings", files["wide"],
              "--outdir", str(files["root"] / "x")])
    assert "wide" in str(err.value) and "1024" in str(err.value)


def test_lora_that_fits_nothing_exits_with_message(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--ckpt", files["ckpt"], "--prompt", "x", "--network_weights", files["bad_lora"],
                       "--outdir", str(files["root"] / "y")])
    assert exit_info.value.code == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_unknown_sampler_lists_the_valid_names(files, capsys):
    with pytest.raises(SystemExit):
        run_cli(main, ["--ckpt", files["ckpt"], "--prompt", "x", "--sampler", "nope"])
    err = capsys.readouterr().err
    assert "nope" in err and "dpmsolver++" in err


def test_training_samples_use_kohya_names(files):
    import argparse
    import re

    from library.checkpoints import load_model
    from library.sampling.training_samples import TrainingSampler

    prompt_file = files["root"] / "samples.txt"
    prompt_file.write_text("# comment\nmytok photo --d 3 --w 64 --h 64 --s 2\nplain --w 64 --h 64 --s 2 --ss euler\n",
                           encoding="utf-8")
    args = argparse.Namespace(sample_prompts=str(prompt_file), sample_sampler="ddim", output_dir=str(files["root"]),
                              output_name="run", clip_skip=None, seed=11)
    seen = []
    sampler = TrainingSampler(args, load_model(files["ckpt"]), prompt_rewrite=lambda t: seen.append(t) or t)
    step_paths = sampler(step=10)
    epoch_paths = sampler(step=20, epoch=2)
    names = [os.path.relpath(p, str(files["root"])) for p in step_paths + epoch_paths]
    assert re.fullmatch(r"sample/run_000010_00_\d{14}_3\.png", names[0])
    assert re.fullmatch(r"sample/run_000010_01_\d{14}\.png", names[1])  # no --d: no seed suffix, as kohya
    assert re.fullmatch(r"sample/run_e000002_00_\d{14}_3\.png", names[2])
    assert "mytok photo" in seen
    texts, first = _png_texts(step_paths[0])
    assert "Seed: 3" in texts["parameters"] and "Sampler: DDIM" in texts["parameters"]
    assert np.array_equal(first, _png_texts(epoch_paths[0])[1])  # same weights, same seed -> same image
    assert "Sampler: Euler" in _png_texts(step_paths[1])[0]["parameters"]
