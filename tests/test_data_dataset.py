"""Items, reg balancing, batches, epoch reshuffle determinism, sharding, validation split, folder errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from library.config import blueprint_from_user_config
from library.data import build_dataset_group
from library.errors import UserError


def make_folder(root, name, sizes, caption="a photo of mytoy", ext=".png"):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for i, size in enumerate(sizes):
        color = ((37 * i) % 255, (91 * i) % 255, (53 * i + 20) % 255)
        image = Image.new("RGB", size, color)
        image.putpixel((0, 0), (255, 255, 255))  # make left/right flips distinguishable
        image.save(os.path.join(folder, f"{name}_{i}{ext}"))
        if caption is not None:
            with open(os.path.join(folder, f"{name}_{i}.txt"), "w", encoding="utf-8") as f:
                f.write(f"{caption}, tag{i}, extra{i}")
    return folder


def dummy_tokenize(captions):
    ids = np.zeros((len(captions), 77), np.int32)
    for row, caption in enumerate(captions):
        ids[row, : len(caption.split()) + 2] = [49406] + [len(w) for w in caption.split()] + [49407]
    return [ids]


def build(tmp_path, dataset, subsets, general=None, seed=0, split="train", prior_loss_weight=None):
    general = dict(general or {}, caption_extension=".txt")
    config = {"general": general, "datasets": [dict(dataset, subsets=subsets)]}
    args = None
    if prior_loss_weight is not None:
        import argparse

        args = argparse.Namespace(prior_loss_weight=prior_loss_weight)
    bp = blueprint_from_user_config(config, args, config_file=str(tmp_path / "c.toml"), support_dropout=True)
    return build_dataset_group(bp, tokenize=dummy_tokenize, seed=seed, split=split)


def test_reg_balancing_round_robin(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 3)
    make_folder(tmp_path, "reg", [(32, 32)] * 4, caption="a photo of a toy")
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "obj", "num_repeats": 5},
                                                 {"image_dir": "reg", "is_reg": True}])
    reg = [it.num_repeats for it in group.items if it.is_reg]
    # kohya counts reg images x their subset's repeats before balancing: 4 x 1
    assert reg == [4, 4, 4, 3] and group.num_train_images == 15 and group.num_reg_images == 4

    make_folder(tmp_path, "reg2", [(32, 32)] * 2)
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "obj", "num_repeats": 5},
                                                 {"image_dir": "reg2", "is_reg": True, "num_repeats": 2}])
    # first round 2 + 2, then 11 single increments round-robin: 6 for the first image, 5 for the second
    assert [it.num_repeats for it in group.items if it.is_reg] == [8, 7]

    make_folder(tmp_path, "few", [(32, 32)] * 2)
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "few"}, {"image_dir": "reg", "is_reg": True}])
    assert [it.num_repeats for it in group.items if it.is_reg] == [1, 1]  # two reg images unused
    assert group.num_reg_images == 4  # ... and counted all the same (kohya's ss_num_reg_images)


def test_batch_contents(tmp_path):
    make_folder(tmp_path, "obj", [(48, 32), (32, 48), (64, 64)])
    make_folder(tmp_path, "reg", [(32, 32)], caption="a photo of a toy")
    group = build(tmp_path, {"resolution": 32, "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 16,
                             "max_bucket_reso": 64, "bucket_reso_steps": 16, "network_multiplier": 0.5},
                  [{"image_dir": "obj"}, {"image_dir": "reg", "is_reg": True}], prior_loss_weight=0.25)
    seen = 0
    for i in range(len(group)):
        batch = group[i]
        count = len(batch["image_keys"])
        assert batch["images"].dtype == np.float32 and batch["images"].shape[:2] == (count, 3)
        assert batch["images"].min() >= -1.0 and batch["images"].max() <= 1.0
        h, w = batch["images"].shape[2:]
        assert (batch["target_sizes_hw"] == [h, w]).all()
        assert batch["input_ids"][0].shape == (count, 77)
        for j, key in enumerate(batch["image_keys"]):
            expected = 0.25 if "/reg/" in key else 1.0
            assert batch["loss_weights"][j] == expected
            original = Image.open(key).size
            assert tuple(batch["original_sizes_hw"][j]) == (original[1], original[0])
        assert (batch["network_multipliers"] == 0.5).all()
        assert batch["crop_top_lefts"].shape == (count, 2) and batch["flipped"].dtype == bool
        seen += count
    assert seen == sum(item.num_repeats for item in group.items) == 6  # 3 train + the reg image repeated 3 times


def collect(group, epoch):
    group.set_epoch(epoch)
    return [group[i] for i in range(len(group))]


def test_epoch_reshuffle_is_deterministic_and_resumable(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 6 + [(48, 32)] * 4)
    spec = ({"resolution": 32, "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 16,
             "max_bucket_reso": 64, "bucket_reso_steps": 16},
            [{"image_dir": "obj", "num_repeats": 2, "shuffle_caption": True, "flip_aug": True}])
    straight = build(tmp_path, *spec, seed=5)
    epochs = [collect(straight, e) for e in (1, 2, 3)]
    resumed = build(tmp_path, *spec, seed=5)
    resumed.set_epoch(3)
    for i in (3, 0, len(resumed) - 1):
        batch = resumed[i]
        assert batch["image_keys"] == epochs[2][i]["image_keys"]
        assert batch["captions"] == epochs[2][i]["captions"]
        np.testing.assert_array_equal(batch["flipped"], epochs[2][i]["flipped"])
        np.testing.assert_array_equal(batch["images"], epochs[2][i]["images"])
    orders = [[tuple(b["image_keys"]) for b in epoch] for epoch in epochs]
    assert orders[0] != orders[1] != orders[2]
    for epoch in orders:  # every epoch covers each image num_repeats times
        keys = [k for batch in epoch for k in batch]
        assert len(keys) == 20 and all(keys.count(k) == 2 for k in set(keys))
    other_seed = build(tmp_path, *spec, seed=6)
    assert [tuple(b["image_keys"]) for b in collect(other_seed, 1)] != orders[0]


def test_caption_dropout_every_n_epochs_counts_kohya_epochs(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 2)
    group = build(tmp_path, {"resolution": 32, "batch_size": 2},
                  [{"image_dir": "obj", "caption_dropout_every_n_epochs": 2}], seed=None)
    captions = []
    for epoch in range(4):  # loop index; kohya's epochs 1..4, captions dropped in 2 and 4
        group.set_epoch(epoch)
        captions.append(group[0]["captions"])
    assert [all(c == "" for c in caps) for caps in captions] == [False, True, False, True]
    assert all(c.startswith("a photo of mytoy") for c in captions[0])


def test_flip_uses_mirrored_pixels_and_flipped_crop(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 4)
    group = build(tmp_path, {"resolution": 32, "batch_size": 4}, [{"image_dir": "obj", "flip_aug": True}], seed=1)
    batch = group[0]
    assert batch["flipped"].any() and not batch["flipped"].all()
    for j, key in enumerate(batch["image_keys"]):
        pixels = np.asarray(Image.open(key).convert("RGB")).astype(np.float32) / 127.5 - 1
        expected = pixels[:, ::-1] if batch["flipped"][j] else pixels
        np.testing.assert_allclose(batch["images"][j], expected.transpose(2, 0, 1), atol=1e-6)


def test_shards_split_every_global_batch(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 5 + [(48, 32)] * 2)
    spec = ({"resolution": 32, "batch_size": 2, "enable_bucket": True, "min_bucket_reso": 16,
             "max_bucket_reso": 64, "bucket_reso_steps": 16}, [{"image_dir": "obj", "flip_aug": True}])
    group = build(tmp_path, *spec, seed=3)
    ranks = [group.shard(r, 2) for r in range(2)]
    for part in ranks:
        part.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1])
    keys = []
    for i in range(len(ranks[0])):
        parts = [r[i] for r in ranks]
        assert all(len(p["image_keys"]) == 2 for p in parts)  # short global batches are padded
        assert parts[0]["images"].shape == parts[1]["images"].shape
        keys += parts[0]["image_keys"] + parts[1]["image_keys"]
    assert set(keys) == {it.key for it in group.items}
    # the same global batches as one process with batch_size * world, with the same per-sample choices
    wide = build(tmp_path, dict(spec[0], batch_size=4), spec[1], seed=3)
    wide.set_epoch(2)
    for i in range(len(wide)):
        full = wide[i]
        if len(full["image_keys"]) < 4:
            continue
        parts = [r[i] for r in ranks]
        assert parts[0]["image_keys"] + parts[1]["image_keys"] == full["image_keys"]
        assert list(parts[0]["flipped"]) + list(parts[1]["flipped"]) == list(full["flipped"])


def test_no_bucket_mode_resizes_to_resolution(tmp_path):
    make_folder(tmp_path, "obj", [(80, 64), (64, 96)])
    group = build(tmp_path, {"resolution": 32, "batch_size": 2}, [{"image_dir": "obj"}])
    assert len(group) == 1 and group[0]["images"].shape == (2, 3, 32, 32)


def test_validation_split_disjoint_and_excludes_reg(tmp_path):
    make_folder(tmp_path, "obj", [(32, 32)] * 6)
    make_folder(tmp_path, "reg", [(32, 32)] * 2)
    spec = ({"resolution": 32, "validation_split": 0.34, "validation_seed": 1},
            [{"image_dir": "obj"}, {"image_dir": "reg", "is_reg": True}])
    train = {it.key for it in build(tmp_path, *spec).items if not it.is_reg}
    val_group = build(tmp_path, *spec, split="validation")
    val = {it.key for it in val_group.items}
    assert len(train) == 4 and len(val) == 2 and not train & val
    assert not any(it.is_reg for it in val_group.items)


def test_image_folder_errors(tmp_path):
    os.makedirs(tmp_path / "empty" / "sub")
    with pytest.raises(UserError) as info:
        build(tmp_path, {"resolution": 32}, [{"image_dir": "empty"}])
    assert "no images" in str(info.value) and "sub-folders" in str(info.value)
    os.makedirs(tmp_path / "broken")
    (tmp_path / "broken" / "x.PNG").write_bytes(b"not a png")
    with pytest.raises(UserError) as info:
        build(tmp_path, {"resolution": 32}, [{"image_dir": "broken"}])
    assert "x.PNG" in str(info.value)


def test_captions_class_tokens_cache_info_and_extensions(tmp_path):
    folder = make_folder(tmp_path, "obj", [(32, 32), (32, 32)], caption=None, ext=".JPG")
    Image.new("RGB", (40, 32)).save(os.path.join(folder, "extra.webp"))
    with open(os.path.join(folder, "obj_0.txt"), "w", encoding="utf-8") as f:
        f.write("own caption")
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "obj", "class_tokens": "mytoy toy",
                                                  "cache_info": True}])
    captions = {os.path.basename(it.path): it.caption for it in group.items}
    assert captions == {"obj_0.JPG": "own caption", "obj_1.JPG": "mytoy toy", "extra.webp": "mytoy toy"}
    cache = json.load(open(os.path.join(folder, "metadata_cache.json"), encoding="utf-8"))
    assert cache[os.path.join(folder, "extra.webp")] == {"caption": "mytoy toy", "resolution": [40, 32]}


def test_finetuning_metadata_json_and_jsonl(tmp_path):
    folder = make_folder(tmp_path, "ft", [(32, 32), (32, 32)], caption=None)
    meta = {"ft_0": {"caption": "a photo", "tags": "red, toy"}, "ft_1.png": {"tags": "blue"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "ft", "metadata_file": "meta.json"}])
    # kohya joins caption and tags with caption_separator and nothing else
    assert sorted(it.caption for it in group.items) == ["a photo,red, toy", "blue"]
    lines = [{"image_path": os.path.join(folder, "ft_0.png"), "caption": "line caption"}]
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    group = build(tmp_path, {"resolution": 32}, [{"metadata_file": "meta.jsonl"}])
    assert [it.caption for it in group.items] == ["line caption"]


def test_finetuning_caption_separator_and_wildcard_lines(tmp_path):
    make_folder(tmp_path, "ft", [(32, 32)] * 3, caption=None)
    meta = {"ft_0": {"caption": "a photo of a tree", "tags": "tree, green"},
            "ft_1": {"caption": "line one\n\nline two", "tags": "x\ny"}, "ft_2": {"caption": "", "tags": ""}}
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "ft", "metadata_file": "meta.json",
                                                  "caption_separator": ";"}])
    captions = {os.path.basename(it.path): it.caption for it in group.items}
    assert captions == {"ft_0.png": "a photo of a tree;tree, green", "ft_1.png": "line one\n\nline two;x\ny",
                        "ft_2.png": ""}
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "ft", "metadata_file": "meta.json",
                                                  "enable_wildcard": True}])
    captions = {os.path.basename(it.path): it.caption for it in group.items}
    # wildcards: the tags, made one line, follow every non-empty caption line
    assert captions == {"ft_0.png": "a photo of a tree,tree, green", "ft_1.png": "line one,x,y\nline two,x,y",
                        "ft_2.png": ""}


def test_training_metadata_as_kohya_writes_it(tmp_path):
    from library.data import training_metadata

    make_folder(tmp_path, "obj", [(32, 32)] * 3)
    make_folder(tmp_path, "reg", [(32, 32)] * 8, caption="Toy")
    group = build(tmp_path, {"resolution": 32, "batch_size": 2},
                  [{"image_dir": "obj", "num_repeats": 2}, {"image_dir": "reg", "is_reg": True, "num_repeats": 2}])
    assert sum(1 for item in group.items if item.is_reg) == 3  # 3 reg images cover the 6 train images
    meta = training_metadata(group)
    # every reg image x repeats before balancing, used or not
    assert meta["ss_num_train_images"] == "6" and meta["ss_num_reg_images"] == "16"
    frequency = json.loads(meta["ss_tag_frequency"])
    assert frequency["obj"]["a photo of mytoy"] == 3 and frequency["obj"]["tag0"] == 1
    assert frequency["reg"]["toy"] == 8  # lower-cased, every loaded reg image
    assert json.loads(meta["ss_dataset_dirs"]) == {"obj": {"n_repeats": 2, "img_count": 3}}
    (dataset,) = json.loads(meta["ss_datasets"])
    assert dataset["is_dreambooth"] is True and dataset["resolution"] == [32, 32]
    assert dataset["num_reg_images"] == 16 and dataset["num_train_images"] == 6
    # bucketing off: kohya's dataset holds no bucket settings
    assert dataset["bucket_info"] is None and dataset["min_bucket_reso"] is None
    assert dataset["max_bucket_reso"] is None and dataset["enable_bucket"] is False
    assert [s["is_reg"] for s in dataset["subsets"]] == [False, True]
    assert dataset["subsets"][1]["num_repeats"] == 2  # configured repeats; balancing changes the images'
    assert dataset["subsets"][1]["img_count"] == 8


def test_training_metadata_buckets_and_repeated_folder_names(tmp_path):
    from library.data import training_metadata

    make_folder(tmp_path, "obj", [(48, 32), (32, 48), (48, 32)])
    buckets = {"enable_bucket": True, "min_bucket_reso": 16, "max_bucket_reso": 64, "bucket_reso_steps": 16}
    config = {"general": {"caption_extension": ".txt"},
              "datasets": [dict({"resolution": 32}, **buckets, subsets=[{"image_dir": "obj", "num_repeats": 2}]),
                           {"resolution": 32, "subsets": [{"image_dir": "obj"}]}]}
    bp = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    meta = training_metadata(build_dataset_group(bp, tokenize=dummy_tokenize))
    first, second = json.loads(meta["ss_datasets"])
    assert first["bucket_info"]["buckets"] == {"0": {"resolution": [16, 48], "count": 2},
                                               "1": {"resolution": [32, 32], "count": 4}}
    assert (first["min_bucket_reso"], first["max_bucket_reso"]) == (16, 64) and second["bucket_info"] is None
    # kohya numbers a folder seen again instead of merging it
    assert json.loads(meta["ss_dataset_dirs"]) == {"obj": {"n_repeats": 2, "img_count": 3},
                                                   "obj (2)": {"n_repeats": 1, "img_count": 3}}


def test_folder_mode_metadata_keys(tmp_path):
    import argparse

    from library.config import generate_blueprint
    from library.config.cli_args import add_dataset_arguments
    from library.data import training_metadata

    make_folder(tmp_path / "train", "3_mytoy", [(32, 32)] * 2)
    make_folder(tmp_path / "reg", "1_toy", [(32, 32)] * 5, caption="toy")
    parser = add_dataset_arguments(argparse.ArgumentParser(), support_dropout=True)
    parser.add_argument("--train_batch_size", type=int, default=2)
    args = parser.parse_args(["--train_data_dir", str(tmp_path / "train"), "--reg_data_dir", str(tmp_path / "reg"),
                              "--resolution", "32", "--caption_extension", ".txt", "--flip_aug", "--keep_tokens",
                              "1"])
    meta = training_metadata(build_dataset_group(generate_blueprint(args), tokenize=dummy_tokenize), args, 4)
    assert "ss_datasets" not in meta
    assert meta["ss_num_train_images"] == "6" and meta["ss_num_reg_images"] == "5"
    assert (meta["ss_batch_size_per_device"], meta["ss_total_batch_size"], meta["ss_resolution"]) == \
        ("2", "4", "(32, 32)")
    assert (meta["ss_flip_aug"], meta["ss_color_aug"], meta["ss_keep_tokens"]) == ("True", "False", "1")
    # bucketing off: str(None) and json.dumps(None), as kohya writes them
    assert (meta["ss_enable_bucket"], meta["ss_bucket_no_upscale"]) == ("False", "False")
    assert (meta["ss_min_bucket_reso"], meta["ss_max_bucket_reso"], meta["ss_bucket_info"]) == \
        ("None", "None", "null")
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_mytoy": {"n_repeats": 3, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_toy": {"n_repeats": 1, "img_count": 5}}


def test_dataset_of_reg_subsets_only_registers_nothing(tmp_path, caplog):
    make_folder(tmp_path, "obj", [(32, 32)] * 2)
    make_folder(tmp_path, "reg", [(32, 32)] * 3, caption="toy")
    config = {"general": {"caption_extension": ".txt"},
              "datasets": [{"resolution": 32, "subsets": [{"image_dir": "obj"}]},
                           {"resolution": 32, "subsets": [{"image_dir": "reg", "is_reg": True}]}]}
    bp = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    with caplog.at_level("WARNING"):
        group = build_dataset_group(bp, tokenize=dummy_tokenize)
    assert "only regularisation subsets" in caplog.text and "datasets[1]" in caplog.text
    assert [len(d.items) for d in group.datasets] == [2, 0] and len(group) == 2
    assert group.num_reg_images == 3  # still counted, as kohya
    config["datasets"] = config["datasets"][1:]
    bp = blueprint_from_user_config(config, None, config_file=str(tmp_path / "c.toml"))
    with pytest.raises(UserError, match="no training images"):
        build_dataset_group(bp, tokenize=dummy_tokenize)


def test_alpha_mask_and_no_bucket_random_crop(tmp_path):
    folder = tmp_path / "rgba"
    folder.mkdir()
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[:, :, 0] = np.arange(48, dtype=np.uint8)[None, :] * 5  # red ramp tells where the crop was taken
    rgba[:, :24, 3] = 255  # left half opaque
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    group = build(tmp_path, {"resolution": 32}, [{"image_dir": "rgba", "alpha_mask": True, "random_crop": True}])
    offsets = set()
    for epoch in range(6):
        group.set_epoch(epoch)
        batch = group[0]
        assert batch["images"].shape == (1, 3, 32, 32) and batch["alpha_masks"].shape == (1, 32, 32)
        red = np.rint((batch["images"][0, 0, 0] + 1) * 127.5).astype(int)
        start = red[0] // 5
        np.testing.assert_array_equal(red, (np.arange(32) + start) * 5)  # a window of the unresized image
        expected_alpha = (np.arange(32) + start < 24).astype(np.float32)
        np.testing.assert_array_equal(batch["alpha_masks"][0, 0], expected_alpha)
        offsets.add(int(start))
    assert len(offsets) > 1 and all(0 <= o <= 16 for o in offsets)


def test_sdxl_crop_top_left_follows_flip(tmp_path):
    make_folder(tmp_path, "tall", [(96, 160)])
    group = build(tmp_path, {"resolution": 64}, [{"image_dir": "tall", "flip_aug": True}])
    seen = {}
    for epoch in range(8):
        group.set_epoch(epoch)
        batch = group[0]
        seen[bool(batch["flipped"][0])] = tuple(batch["crop_top_lefts"][0])
        assert tuple(batch["original_sizes_hw"][0]) == (160, 96) and tuple(batch["target_sizes_hw"][0]) == (64, 64)
    # fitted inside 64x64 by height: width 38.4, left = (64 - 38.4) // 2 = 12, right = 50.4; flipped left 13.6
    assert seen == {False: (0, 12), True: (0, 13)}


def test_color_aug_is_seeded_and_keeps_shape():
    import random

    from library.data.images import color_aug

    rgb = np.random.default_rng(0).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    outputs = [color_aug(rgb, random.Random(s)) for s in range(30)]
    assert all(o.shape == rgb.shape and o.dtype == np.uint8 for o in outputs)
    changed = [not np.array_equal(o, rgb) for o in outputs]
    assert any(changed) and not all(changed)  # applied with probability about 1/3
    np.testing.assert_array_equal(color_aug(rgb, random.Random(4)), outputs[4])
    assert max(np.abs(o.astype(int) - rgb).mean() for o in outputs) < 40  # weak augmentation


def test_face_crop_centres_the_face_without_buckets(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    image = np.zeros((200, 300, 3), np.uint8)
    image[80:120, 180:220] = 255  # a white "face" 40x40 centred at (200, 100)
    Image.fromarray(image).save(folder / "person_200_100_40_40.png")
    (folder / "person.txt").write_text("a photo of a person", encoding="utf-8")
    group = build(tmp_path, {"resolution": 64}, [{"image_dir": "faces", "face_crop_aug_range": [1.0, 2.0]}])
    assert group.items[0].caption == "a photo of a person"  # caption of the name without the face box
    for epoch in range(4):
        group.set_epoch(epoch)
        batch = group[0]
        assert batch["images"].shape == (1, 3, 64, 64)
        white = batch["images"][0, 0] > 0.5
        ys, xs = np.nonzero(white)
        assert white.sum() > 64  # the face is inside the crop, reasonably large
        assert abs(ys.mean() - 32) < 8 and abs(xs.mean() - 32) < 8
        assert tuple(batch["crop_top_lefts"][0]) == (0, 0)
    with pytest.raises(UserError, match="face_crop_aug_range cannot be used with --cache_latents"):
        from library.data import cache_latents

        cache_latents(group, lambda x: x, log=None)
