"""kohya's bucket algorithm: list, closest-aspect selection, cover-resize, no-upscale rounding, SDXL crop."""
import numpy as np
from PIL import Image

from library.data.buckets import BucketSelector, get_crop_ltrb, make_bucket_resolutions
from library.data.images import resize, trim_and_resize

# reference/kohya_sd_scripts.md section 3.1: 512x512, 256-1024, step 64 -> 17 buckets
KOHYA_17 = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
            (512, 512)]
KOHYA_17 = sorted(set(KOHYA_17 + [(h, w) for w, h in KOHYA_17]))


def test_bucket_list_matches_kohya_17():
    buckets = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert buckets == KOHYA_17
    assert len(buckets) == 17
    assert all(w * h <= 512 * 512 for w, h in buckets)


def test_select_closest_aspect_and_cover_resize():
    selector = BucketSelector(False, (512, 512), 256, 1024, 64)
    reso, resized, error = selector.select(1200, 800)
    assert reso == (640, 384)
    # kohya: scale = 640 / 1200 -> (int(1200 * s + 0.5), int(800 * s + 0.5)) = (640, 427), then crop the height.
    # (reference/kohya_sd_scripts.md and issue 2 write "(640, 533)", which does not keep the 3:2 aspect ratio)
    assert resized == (640, 427)
    assert abs(error - (640 / 384 - 1.5)) < 1e-12
    # an image whose size is a bucket keeps it, unresized
    assert selector.select(448, 576)[:2] == ((448, 576), (448, 576))
    # portrait 2:3 is wider than the 3:5 bucket: the height matches, the width overflows
    assert selector.select(800, 1200)[:2] == ((384, 640), (427, 640))


def test_no_upscale_rounding():
    selector = BucketSelector(True, (512, 512), reso_steps=64)
    assert selector.select(600, 400)[:2] == ((576, 384), (600, 400))
    assert selector.select(2000, 1000)[:2] == ((640, 320), (640, 320))
    # small images are never enlarged
    assert selector.select(100, 70)[:2] == ((64, 64), (100, 70))


def test_single_bucket_mode_uses_resolution():
    selector = BucketSelector(False, (64, 64), predefined=[(64, 64)])
    assert selector.select(160, 128)[:2] == ((64, 64), (80, 64))


def test_crop_ltrb_sai_rule():
    # wide image in a square bucket: fits by width, centred vertically
    left, top, right, bottom = get_crop_ltrb((64, 64), (160, 128))
    assert (left, right) == (0, 64)
    assert top == (64 - 64 / 1.25) // 2 and bottom == top + 64 / 1.25
    # tall image in a wide bucket: fits by height, centred horizontally
    left, top, right, bottom = get_crop_ltrb((640, 384), (400, 800))
    assert top == 0 and bottom == 384 and left == (640 - 192) // 2 and right == left + 192


def test_trim_and_resize_centre_crop_and_random_crop():
    import random

    rng_image = np.random.default_rng(0).integers(0, 255, size=(800, 1200, 3), dtype=np.uint8)
    out, original, crop_ltrb, offsets = trim_and_resize(rng_image, (640, 384), (640, 427))
    assert out.shape == (384, 640, 3) and original == (1200, 800)
    assert offsets == (0, (427 - 384) // 2)
    expected = resize(rng_image, (640, 427))[offsets[1]:offsets[1] + 384]
    np.testing.assert_array_equal(out, expected)
    assert crop_ltrb == get_crop_ltrb((640, 384), (1200, 800))
    seen = {trim_and_resize(rng_image, (640, 384), (640, 427), random.Random(s), True)[3] for s in range(20)}
    assert all(x == 0 and 0 <= y <= 427 - 384 for x, y in seen) and len(seen) > 1


def test_resize_default_filters_are_box_down_lanczos_up():
    image = np.random.default_rng(1).integers(0, 255, size=(40, 60, 3), dtype=np.uint8)
    down = resize(image, (30, 20))
    np.testing.assert_array_equal(down, np.asarray(Image.fromarray(image).resize((30, 20), Image.BOX)))
    up = resize(image, (90, 60))
    np.testing.assert_array_equal(up, np.asarray(Image.fromarray(image).resize((90, 60), Image.LANCZOS)))
    nearest = resize(image, (30, 20), "nearest")
    np.testing.assert_array_equal(nearest, np.asarray(Image.fromarray(image).resize((30, 20), Image.NEAREST)))
