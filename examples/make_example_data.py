"""Draw the bundled example dataset (no third-party images, so no licence question).

examples/data/object/: 6 images of one toy (a red robot with a yellow antenna) at different places, angles and
    backgrounds, captions containing the token string `mytoy`.
examples/data/reg/:    4 regularisation images of other toys, captioned "a photo of a toy".

Deterministic: running it again writes the same files. Usage: python examples/make_example_data.py"""
import math
import os
import random

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
OBJECT_CAPTIONS = [
    "a photo of mytoy on a table",
    "a photo of mytoy on a blue floor",
    "a close-up photo of mytoy",
    "a photo of mytoy in a room",
    "a photo of mytoy on a shelf",
    "a photo of mytoy standing on grass",
]
OBJECT_SIZES = [(128, 128), (128, 128), (128, 128), (128, 128), (160, 128), (128, 160)]
BACKGROUNDS = [((205, 170, 125), (160, 120, 80)), ((90, 120, 200), (60, 80, 150)), ((235, 235, 225), (200, 200, 190)),
               ((180, 200, 180), (120, 140, 120)), ((150, 110, 80), (110, 80, 60)), ((110, 180, 90), (70, 130, 60))]


def background(size, top, bottom):
    """A vertical two-colour gradient (a wall and a floor)."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    width, height = size
    for y in range(height):
        t = y / max(1, height - 1)
        color = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.line([(0, y), (width, y)], fill=color)
    return image


def draw_robot(scale):
    """The example concept: a red boxy robot toy with a round head, white eyes and a yellow antenna."""
    s = scale
    layer = Image.new("RGBA", (int(60 * s), int(80 * s)), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.rounded_rectangle([10 * s, 34 * s, 50 * s, 70 * s], radius=int(6 * s), fill=(210, 30, 40, 255))
    d.ellipse([16 * s, 12 * s, 44 * s, 38 * s], fill=(220, 40, 50, 255))
    d.ellipse([22 * s, 20 * s, 28 * s, 26 * s], fill=(255, 255, 255, 255))
    d.ellipse([32 * s, 20 * s, 38 * s, 26 * s], fill=(255, 255, 255, 255))
    d.line([30 * s, 12 * s, 30 * s, 4 * s], fill=(240, 200, 20, 255), width=max(1, int(2 * s)))
    d.ellipse([27 * s, 1 * s, 33 * s, 7 * s], fill=(250, 210, 30, 255))
    d.rectangle([14 * s, 70 * s, 24 * s, 78 * s], fill=(60, 60, 70, 255))
    d.rectangle([36 * s, 70 * s, 46 * s, 78 * s], fill=(60, 60, 70, 255))
    return layer


def draw_other_toy(kind, size, rng):
    image = background(size, (200, 200, 210), (150, 150, 160))
    d = ImageDraw.Draw(image)
    cx, cy = size[0] // 2 + rng.randint(-15, 15), size[1] // 2 + rng.randint(-10, 15)
    if kind == "ball":
        d.ellipse([cx - 30, cy - 30, cx + 30, cy + 30], fill=(40, 90, 220))
        d.arc([cx - 30, cy - 12, cx + 30, cy + 12], 0, 180, fill=(250, 250, 250), width=3)
    elif kind == "blocks":
        for k, color in enumerate([(40, 170, 60), (240, 180, 30), (150, 60, 200)]):
            d.rectangle([cx - 36 + 24 * k, cy - 10 - 8 * k, cx - 14 + 24 * k, cy + 30], fill=color)
    elif kind == "car":
        d.rectangle([cx - 40, cy - 5, cx + 40, cy + 18], fill=(250, 120, 20))
        d.polygon([(cx - 22, cy - 5), (cx - 12, cy - 24), (cx + 16, cy - 24), (cx + 26, cy - 5)], fill=(250, 140, 40))
        for wx in (cx - 24, cx + 24):
            d.ellipse([wx - 10, cy + 10, wx + 10, cy + 30], fill=(30, 30, 30))
    else:  # teddy bear
        d.ellipse([cx - 26, cy - 10, cx + 26, cy + 40], fill=(150, 100, 60))
        d.ellipse([cx - 20, cy - 44, cx + 20, cy - 4], fill=(160, 110, 70))
        for ex in (cx - 18, cx + 18):
            d.ellipse([ex - 9, cy - 50, ex + 9, cy - 32], fill=(140, 90, 50))
    return image


def make_object_images(folder, rng):
    os.makedirs(folder, exist_ok=True)
    for i, (size, caption) in enumerate(zip(OBJECT_SIZES, OBJECT_CAPTIONS)):
        image = background(size, *BACKGROUNDS[i])
        robot = draw_robot(rng.uniform(0.9, 1.3)).rotate(rng.uniform(-25, 25), resample=Image.BICUBIC,
                                                          expand=True)
        x = rng.randint(0, max(0, size[0] - robot.width))
        y = rng.randint(0, max(0, size[1] - robot.height))
        image.paste(robot, (x, y), robot)
        name = os.path.join(folder, f"mytoy_{i + 1:02d}")
        image.save(name + ".png", optimize=True)
        with open(name + ".txt", "w", encoding="utf-8") as f:
            f.write(caption + "\n")


def make_reg_images(folder, rng):
    os.makedirs(folder, exist_ok=True)
    for i, kind in enumerate(["ball", "blocks", "car", "bear"]):
        image = draw_other_toy(kind, (128, 128), rng)
        name = os.path.join(folder, f"toy_{i + 1:02d}")
        image.save(name + ".png", optimize=True)
        with open(name + ".txt", "w", encoding="utf-8") as f:
            f.write("a photo of a toy\n")


def main():
    rng = random.Random(20240601)
    make_object_images(os.path.join(HERE, "data", "object"), rng)
    make_reg_images(os.path.join(HERE, "data", "reg"), rng)
    total = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(os.path.join(HERE, "data"))
                for n in names)
    print(f"wrote examples/data ({total / 1024:.1f} KiB)")
    assert total < 1024 * 1024 and math.isfinite(total)


if __name__ == "__main__":
    main()
