"""The template browser's thumbnail of an example: what goes in on the left, what comes out on the right, and
what the example needs, in letters that stay readable at card size (a screenshot of a whole graph does not)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 600  # square: the template browser fits a thumbnail into a square
MARGIN = 24
INPUTS = (SIZE - 2 * MARGIN, 280)  # the band the inputs fill, at the top
BACKGROUND, TEXT, QUIET, NEEDS = (30, 30, 34), (240, 240, 240), (170, 170, 180), (255, 196, 64)
NAME = re.compile(r"^PEZ (\d+) · (.+?) \((.+)\)$")  # "PEZ <n> · <what> (<what it needs>)"


# What an example that needs weights this machine lacks outputs, said in words (keyed by its number); the
# examples that run on the bundled demo model show the prompt their run learned instead.
OUTCOMES = {
    3: ["learns a prompt", "then SD 1.5 draws a new image from it"],
    4: ["learns a short prompt", "that CLIP reads like the long one"],
    5: ["learns one style prompt", "around your subject: a tiger, {}"],
    6: ["learns a prompt for each image", "then joins them into one hybrid prompt"],
    7: ["learns one prompt for both SDXL text encoders", "then SDXL draws from it"],
}


def parts_of(stem: str) -> tuple[int, str, str]:
    """(number, what it does, what it needs) from an example's file name."""
    match = NAME.match(stem)
    if match is None:
        raise ValueError(f"example name {stem!r} is not 'PEZ <n> · <what> (<what it needs>)'")
    return int(match[1]), match[2], match[3]


def _tiles(images: list[Image.Image]) -> Image.Image:
    """The input images side by side, as large as the band allows."""
    band = Image.new("RGB", INPUTS, BACKGROUND)
    gap = 10
    size = min(INPUTS[1], (INPUTS[0] - gap * (len(images) - 1)) // len(images))
    left = (INPUTS[0] - len(images) * size - gap * (len(images) - 1)) // 2
    for i, image in enumerate(images):
        band.paste(image.convert("RGB").resize((size, size), Image.LANCZOS), (left + i * (size + gap), 0))
    return band


def _text_box(text: str) -> Image.Image:
    """A text input (e.g. the long prompt a distill example shortens), where the images would be."""
    band = Image.new("RGB", INPUTS, (44, 44, 50))
    lines = textwrap.wrap(text, 52)[:10]
    ImageDraw.Draw(band).multiline_text((14, 12), "\n".join(lines), font=ImageFont.load_default(size=18),
                                        fill=QUIET, spacing=6)
    return band


def card(stem: str, *, images: list[Image.Image] = (), text: str = "", result: list[str]) -> Image.Image:
    """The thumbnail of example ``stem``: its input images (or input text) at the top, then what it does, what
    it outputs (``result``, an entry a line; the last in bright letters) and what it needs (its name's
    parenthesis)."""
    _, what, needs = parts_of(stem)
    canvas = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    canvas.paste(_tiles(list(images)) if images else _text_box(text), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    heading, body, small = (ImageFont.load_default(size=size) for size in (30, 24, 21))
    y = 2 * MARGIN + INPUTS[1]
    for line in textwrap.wrap(what, 36):
        draw.text((MARGIN, y), line, font=heading, fill=TEXT)
        y += 38
    y += 6
    for entry in result:
        for line in textwrap.wrap(entry, 44)[:3]:
            draw.text((MARGIN, y), line, font=body, fill=TEXT if entry is result[-1] else QUIET)
            y += 30
    lines = textwrap.wrap(needs, 50)
    if y > SIZE - MARGIN - 28 * len(lines):
        raise ValueError(f"{stem}: the thumbnail's text does not fit")
    for i, line in enumerate(lines):
        draw.text((MARGIN, SIZE - MARGIN - 28 * (len(lines) - i)), line, font=small, fill=NEEDS)
    return canvas


def save(image: Image.Image, path: Path) -> None:
    image.save(path, "JPEG", quality=88)
