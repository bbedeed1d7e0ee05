"""Where the loss masks come from: ControlNet-style subsets (conditioning_data_dir, accepted with --masked_loss),
alpha masks, kohya's source order, the area resize to the latents, and when the loss is masked at all."""
import argparse
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from library.config import blueprint_from_user_config
from library.config.blueprint import generate_blueprint
from library.data import build_dataset_group
from library.errors import UserError
from library.training.masks import loss_mask, uses_loss_mask


def save_images(folder, sizes, alpha=False, seed=0, captions=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 4 if alpha else 3)).astype(np.uint8)
        Image.fromarray(pixels, "RGBA" if alpha else "RGB").save(os.path.join(folder, f"img_{i}.png"))
        if captions:
            with open(os.path.join(folder, f"img_{i}.txt"), "w", encoding="utf-8") as f:
                f.write("a photo of mytoy")


def group_for(tmp_path, subsets, dataset=None, masked_loss=True):
    config = {"general": {"caption_extension": ".txt"},
              "datasets": [dict(dataset or {"resolution": 64}, subsets=subsets)]}
    bp = blueprint_from_user_config(config, argparse.Namespace(masked_loss=masked_loss),
                                    config_file=str(tmp_path / "c.toml"), support_controlnet=masked_loss)
    return build_dataset_group(bp, seed=3)


def test_conditioning_images_are_cropped_resized_and_flipped_like_their_images(tmp_path):
    """The conditioning image of each image is that image itself here: with buckets (resize + centre crop of
    other aspect ratios) and flips, the batch's conditioning_images must equal its images exactly."""
    sizes = [(96, 64), (64, 100), (80, 80), (120, 72)]
    save_images(tmp_path / "img", sizes)
    save_images(tmp_path / "cond", sizes, captions=False)
    group = group_for(tmp_path, [{"image_dir": "img", "conditioning_data_dir": "cond", "flip_aug": True}],
                      {"resolution": 64, "enable_bucket": True, "min_bucket_reso": 32, "max_bucket_reso": 128,
                       "bucket_reso_steps": 16, "batch_size": 2})
    flips = 0
    for epoch in range(3):
        group.set_epoch(epoch)
        for index in range(len(group)):
            batch = group[index]
            assert batch["conditioning_images"].shape == batch["images"].shape
            np.testing.assert_array_equal(batch["conditioning_images"], batch["images"])
            flips += int(batch["flipped"].sum())
            assert "alpha_masks" not in batch
    assert flips > 0


def test_conditioning_mask_is_the_red_channel_in_0_1(tmp_path):
    save_images(tmp_path / "img", [(64, 64)])
    os.makedirs(tmp_path / "cond")
    red = np.zeros((64, 64, 3), np.uint8)
    red[:, :32, 0] = 255  # left half white in R, the rest black; G and B must not matter
    red[:, :, 1:] = 200
    Image.fromarray(red).save(tmp_path / "cond" / "img_0.jpg".replace(".jpg", ".png"))
    batch = group_for(tmp_path, [{"image_dir": "img", "conditioning_data_dir": "cond"}])[0]
    mask = loss_mask(batch, (1, 4, 8, 8))
    assert mask.shape == (1, 4, 8, 8)
    np.testing.assert_allclose(mask[0, :, :, :4], 1.0, atol=1e-6)
    np.testing.assert_allclose(mask[0, :, :, 4:], 0.0, atol=1e-6)


@pytest.mark.parametrize("image_hw,latent_hw", [((48, 40), (6, 5)), ((17, 23), (5, 7))])
def test_alpha_masks_area_resized_as_torch(image_hw, latent_hw):
    rng = np.random.default_rng(0)
    alpha = rng.random((3,) + image_hw).astype(np.float32)
    ours = loss_mask({"alpha_masks": alpha}, (3, 4) + latent_hw)
    expected = torch.nn.functional.interpolate(torch.from_numpy(alpha).unsqueeze(1), size=latent_hw, mode="area")
    assert ours.shape == (3, 4) + latent_hw and np.abs(ours - expected.numpy()).max() <= 1e-6
    assert loss_mask({"images": np.zeros((1, 3, 8, 8))}, (1, 4, 1, 1)) is None
    # kohya's order: a conditioning image wins over alpha masks
    both = loss_mask({"alpha_masks": np.zeros((1, 8, 8)), "conditioning_images": np.ones((1, 3, 8, 8))},
                     (1, 4, 1, 1))
    assert (both == 1.0).all()


def test_alpha_masks_of_png_files_reach_the_batch(tmp_path):
    save_images(tmp_path / "img", [(64, 64)] * 2, alpha=True)
    group = group_for(tmp_path, [{"image_dir": "img", "alpha_mask": True}], masked_loss=False)
    for index in range(len(group)):
        batch = group[index]
        name = os.path.basename(batch["image_keys"][0])
        expected = np.asarray(Image.open(tmp_path / "img" / name))[:, :, 3] / 255.0
        np.testing.assert_allclose(batch["alpha_masks"][0], expected, atol=1e-6)


def test_controlnet_subsets_need_masked_loss_and_matching_files(tmp_path):
    save_images(tmp_path / "img", [(64, 64)] * 2)
    save_images(tmp_path / "cond", [(64, 64)] * 2, captions=False)
    subset = [{"image_dir": "img", "conditioning_data_dir": "cond"}]
    with pytest.raises(UserError, match=r"ControlNet subset \(conditioning_data_dir\) is not supported by this "
                                        "trainer"):
        group_for(tmp_path, subset, masked_loss=False)
    os.remove(tmp_path / "cond" / "img_1.png")
    with pytest.raises(UserError, match="no conditioning image .* img_1.png"):
        group_for(tmp_path, subset)
    save_images(tmp_path / "cond", [(64, 64)] * 3, captions=False)
    with pytest.raises(UserError, match="match no image in .*img_2.png"):
        group_for(tmp_path, subset)
    os.remove(tmp_path / "cond" / "img_2.png")
    with pytest.raises(UserError, match="random_crop cannot be used with conditioning_data_dir"):
        group_for(tmp_path, [dict(subset[0], random_crop=True)])
    with pytest.raises(UserError, match="face_crop_aug_range cannot be used with conditioning_data_dir"):
        group_for(tmp_path, [dict(subset[0], face_crop_aug_range=[2.0, 3.0])])
    assert len(group_for(tmp_path, subset).items) == 2


def test_generate_blueprint_takes_support_controlnet_from_masked_loss(tmp_path):
    save_images(tmp_path / "img", [(64, 64)])
    save_images(tmp_path / "cond", [(64, 64)], captions=False)
    toml = tmp_path / "d.toml"
    toml.write_text('[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n'
                    'conditioning_data_dir = "cond"\n', encoding="utf-8")
    assert generate_blueprint(argparse.Namespace(dataset_config=str(toml), masked_loss=True, alpha_mask=True))
    with pytest.raises(UserError, match="not supported by this trainer"):
        generate_blueprint(argparse.Namespace(dataset_config=str(toml), masked_loss=False))


def test_when_the_loss_is_masked(tmp_path, caplog):
    save_images(tmp_path / "plain", [(64, 64)])
    save_images(tmp_path / "alpha", [(64, 64)], alpha=True)
    plain = group_for(tmp_path, [{"image_dir": "plain"}], masked_loss=False)
    alpha = group_for(tmp_path, [{"image_dir": "alpha", "alpha_mask": True}], masked_loss=False)
    # kohya v0.10.1: alpha masks weight the loss even without --masked_loss
    assert uses_loss_mask(argparse.Namespace(masked_loss=False), alpha)
    assert not uses_loss_mask(argparse.Namespace(masked_loss=False), plain)
    with caplog.at_level(logging.INFO, logger="sdms.training"):
        assert not uses_loss_mask(argparse.Namespace(masked_loss=True), plain, report=True)
    assert "--masked_loss: no subset has alpha_mask or conditioning_data_dir" in caplog.text
    assert not uses_loss_mask(argparse.Namespace(masked_loss=True), object())  # the loop's toy datasets
