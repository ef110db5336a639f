"""The images of the vision check: drawn here from a seed (shapes, a gradient, text in the font Pillow ships: no
download), at two sizes and one prompt with both, `vision.draws` times with other pixels, plus the user's own files.
The draws are the units of the vs-floor ratio (paired by prompt): with one draw its 3 prompts gave bounds of
1.6x-11x on a fault at 4x the floor, too wide to fail it. Every image is checked before an
engine starts: a missing file, a file that is not an image, or one beyond the model's pixel limit is refused with
the fix."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from portcheck.errors import PortcheckError

# (name, width, height): two sizes, so a bug that depends on the image's grid shows on one of them.
GENERATED = (("shapes", 64, 48), ("gradient-text", 128, 96))


@dataclass
class ImagePrompt:
    name: str
    images: list  # PIL images, in prompt order
    question: str


def generated_images(seed: int, draw: int = 1) -> dict:
    """name -> PIL image, the same pixels for the same seed, draw and Pillow version (draw 1: named as drawn)."""
    suffix = "" if draw == 1 else f"-{draw}"
    return {f"{name}{suffix}": _draw(name, width, height, random.Random(f"{seed}:{name}{suffix}"))
            for name, width, height in GENERATED}


def _draw(name: str, width: int, height: int, rng: random.Random):
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), _colour(rng))
    draw = ImageDraw.Draw(image)
    if name == "shapes":
        for _ in range(4):
            x, y = rng.randrange(width - 16), rng.randrange(height - 16)
            box = (x, y, x + rng.randrange(8, 24), y + rng.randrange(8, 24))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=_colour(rng))
    else:
        left, right = _colour(rng), _colour(rng)
        for x in range(width):  # a horizontal gradient between two colours
            t = x / (width - 1)
            draw.line([(x, 0), (x, height)], fill=tuple(round(p + (q - p) * t) for p, q in zip(left, right)))
        draw.text((6, height // 3), "Port 910B", fill=(255, 255, 255), font=ImageFont.load_default(size=18))
    return image


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def image_prompts(vision: dict, seed: int, max_pixels: int | None) -> list[ImagePrompt]:
    """For each draw, each generated image alone and both in one prompt; then each of the user's files alone; all
    asked the same question; the user's files refused here when unusable."""
    question = vision["question"]
    prompts = []
    for draw in range(1, vision.get("draws", 1) + 1):
        drawn = generated_images(seed, draw)
        prompts += [ImagePrompt(name, [image], question) for name, image in drawn.items()]
        prompts.append(ImagePrompt("+".join(drawn), list(drawn.values()), question))
    prompts += [ImagePrompt(Path(path).name, [load_image(path, max_pixels)], question) for path in vision["images"]]
    return prompts


def image_problems(vision: dict, base_dir) -> list[str]:
    """The user's images must be readable images, checked while the workflow is planned (their size is checked
    against the model's processor when the vision job starts, before its engine)."""
    problems = []
    for path in vision["images"] if vision["enabled"] else []:
        try:
            load_image(Path(base_dir) / path, None)
        except PortcheckError as exc:
            problems.append(str(exc))
    return problems


def load_image(path, max_pixels: int | None):
    """The user's image as RGB, or a PortcheckError naming the file, the problem and the fix."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PortcheckError(f"vision.images: {path} does not exist; give the path of an image file (relative to the "
                             "workflow directory) or remove it from vision.images")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise PortcheckError(f"vision.images: {path} is not an image Pillow can read ({exc}); convert it to PNG or "
                             "JPEG, or remove it from vision.images") from None
    pixels = rgb.width * rgb.height
    if max_pixels and pixels > max_pixels:
        raise PortcheckError(
            f"vision.images: {path} is {rgb.width}x{rgb.height} = {pixels:,} pixels, over the model's limit of "
            f"{max_pixels:,} (its preprocessor_config.json: size.longest_edge / max_pixels), which the processor "
            "would meet by shrinking the image, so the check would not measure the image you gave: resize it to "
            "at most that many pixels")
    return rgb
