"""Latent cache: VAE batches through a callback, memory + kohya-named npz, reuse and invalidation."""
import os

import numpy as np
import pytest
from PIL import Image

from library.config import blueprint_from_user_config
from library.data import build_dataset_group, cache_latents, latent_cache_path
from library.errors import UserError


class FakeVAE:
    """A deterministic stand-in for the VAE: 2x2 average pooling and a channel mix; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        self.calls.append(images.shape)
        b, c, h, w = images.shape
        pooled = images.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        return np.concatenate([pooled, pooled[:, :1] * 0.5], axis=1)


def make_images(folder, sizes):
    os.makedirs(folder, exist_ok=True)
    for i, size in enumerate(sizes):
        array = np.random.default_rng(i).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(os.path.join(folder, f"img{i}.png"))
        with open(os.path.join(folder, f"img{i}.txt"), "w", encoding="utf-8") as f:
            f.write(f"caption {i}")


def build(tmp_path, **subset_options):
    config = {"general": {"caption_extension": ".txt"},
              "datasets": [{"resolution": 16, "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 8,
                            "max_bucket_reso": 32, "bucket_reso_steps": 8,
                            "subsets": [dict({"image_dir": "imgs"}, **subset_options)]}]}
    bp = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    return build_dataset_group(bp, seed=0)


def test_cached_batches_use_latents_matching_images(tmp_path):
    make_images(tmp_path / "imgs", [(16, 16), (16, 16), (24, 16)])
    plain = build(tmp_path, flip_aug=True)
    cached = build(tmp_path, flip_aug=True)
    vae = FakeVAE()
    counts = cache_latents(cached, vae, vae_batch_size=2, downscale=2, log=None)
    assert counts == {"reused": 0, "rebuilt": 3}
    assert all(shape[0] <= 2 for shape in vae.calls)
    for i in range(len(plain)):
        image_batch, latent_batch = plain[i], cached[i]
        assert "latents" in latent_batch and "images" not in latent_batch
        assert image_batch["image_keys"] == latent_batch["image_keys"]
        np.testing.assert_array_equal(image_batch["flipped"], latent_batch["flipped"])
        np.testing.assert_allclose(latent_batch["latents"], vae(image_batch["images"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(image_batch["crop_top_lefts"], latent_batch["crop_top_lefts"])
        np.testing.assert_array_equal(image_batch["original_sizes_hw"], latent_batch["original_sizes_hw"])


def test_disk_cache_reused_and_rebuilt_when_image_changes(tmp_path, capsys):
    make_images(tmp_path / "imgs", [(16, 16), (16, 16)])
    group = build(tmp_path, flip_aug=True)
    first = cache_latents(group, FakeVAE(), to_disk=True, downscale=2, family="sdxl")
    assert first == {"reused": 0, "rebuilt": 2}
    path0 = os.path.join(tmp_path, "imgs", "img0.png")
    npz_path = latent_cache_path(path0, (16, 16), "sdxl")
    assert npz_path.endswith("img0_0016x0016_sdxl.npz") and os.path.isfile(npz_path)
    with np.load(npz_path) as npz:
        assert {"latents", "latents_flipped", "original_size", "crop_ltrb", "image_sha1"} <= set(npz.files)
        assert npz["latents"].shape == (4, 8, 8) and list(npz["original_size"]) == [16, 16]

    vae = FakeVAE()
    again = cache_latents(build(tmp_path, flip_aug=True), vae, to_disk=True, downscale=2, family="sdxl")
    assert again == {"reused": 2, "rebuilt": 0} and vae.calls == []
    assert "2 reused from disk, 0 encoded" in capsys.readouterr().out

    # same size, new pixels: must be re-encoded
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path0)
    rebuilt_group = build(tmp_path, flip_aug=True)
    assert cache_latents(rebuilt_group, FakeVAE(), to_disk=True, downscale=2, family="sdxl") == {
        "reused": 1, "rebuilt": 1}
    item = next(it for it in rebuilt_group.items if it.path == path0)
    expected = FakeVAE()(np.full((1, 3, 16, 16), 1.0, np.float32) * np.array([200, 10, 10]).reshape(1, 3, 1, 1)
                         / 127.5 - 1.0)
    np.testing.assert_allclose(item.cache["latents"], expected[0], atol=1e-6)

    # a different latent size (another VAE downscale) is not reused either
    assert cache_latents(build(tmp_path, flip_aug=True), FakeVAE(), to_disk=True, downscale=4,
                         family="sdxl")["rebuilt"] == 2


def test_missing_flipped_latents_means_rebuild(tmp_path):
    make_images(tmp_path / "imgs", [(16, 16)])
    cache_latents(build(tmp_path), FakeVAE(), to_disk=True, downscale=2, log=None)
    counts = cache_latents(build(tmp_path, flip_aug=True), FakeVAE(), to_disk=True, downscale=2, log=None)
    assert counts == {"reused": 0, "rebuilt": 1}


def test_random_crop_and_color_aug_refuse_caching(tmp_path):
    make_images(tmp_path / "imgs", [(16, 16)])
    for option in ("random_crop", "color_aug"):
        with pytest.raises(UserError) as info:
            cache_latents(build(tmp_path, **{option: True}), FakeVAE(), downscale=2, log=None)
        assert option in str(info.value) and "datasets[0].subsets[0]" in str(info.value)


def test_nan_latents_reported_with_path(tmp_path):
    make_images(tmp_path / "imgs", [(16, 16)])
    with pytest.raises(UserError, match="NaN detected in latents: .*img0.png"):
        cache_latents(build(tmp_path), lambda x: np.full((x.shape[0], 4, 8, 8), np.nan), downscale=2, log=None)
