"""A tiny procedural "shapes world": 64x64 images of coloured shapes with captions.

The bundled demo CLIP (``shapes-demo``) knows only this world, so the library that ships the model
ships its world too: anyone can draw images the demo model understands. The training script
(``training/train_shapes_clip.py``), the tests and the quality benchmark use it to test meaning
offline. Every attribute word is a single CLIP BPE token. Pure PIL/numpy; the engine never imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SCALE = 4  # draw at 4x, then box-downsample: anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "white", "black")
BACKGROUNDS = ("white", "black", "gray")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")

RGB = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 230),
    "yellow": (245, 220, 30), "purple": (135, 45, 175), "orange": (250, 135, 20),
    "pink": (250, 145, 195), "brown": (125, 75, 30), "white": (255, 255, 255),
    "black": (0, 0, 0), "gray": (128, 128, 128),
}
RADIUS = {"small": 7.0, "large": 13.0}  # in 64 px units
CENTER = {"left": (17, 32), "right": (47, 32), "top": (32, 17), "bottom": (32, 47), "center": (32, 32)}
_PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))

# Templates with {color2}/{shape2} need two objects; the others describe objects[0] (the largest).
TEMPLATES = (
    "a {size} {color} {shape}",
    "a {color} {shape}",
    "a {color} {shape} on a {bg} background",
    "a {color} {shape} on the {position}",
    "a photo of a {color} {shape}",
    "a photo of a {shape}",
    "a {color} object",
    "a {color} {shape} and a {color2} {shape2}",
)
SINGLE_TEMPLATES = tuple(t for t in TEMPLATES if "{shape2}" not in t)
PAIR_TEMPLATES = tuple(t for t in TEMPLATES if "{shape2}" in t)
WORDS = SHAPES + COLORS + BACKGROUNDS + SIZES + POSITIONS


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    position: str
    dx: float = 0.0  # position jitter, 64 px units
    dy: float = 0.0
    scale: float = 1.0  # radius jitter factor
    angle: float = 0.0  # rotation, degrees


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]


def random_scene(rng: np.random.Generator, n_objects: int = 1) -> Scene:
    """Draw a scene with 1 or 2 objects; objects never share the background's colour."""
    bg = str(rng.choice(BACKGROUNDS))
    positions = [str(rng.choice(POSITIONS))] if n_objects == 1 else list(_PAIRS[rng.integers(len(_PAIRS))])
    colors = [c for c in COLORS if c != bg]
    objs: list[Obj] = []
    while len(objs) < n_objects:
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(colors))
        if any(o.shape == shape and o.color == color for o in objs):
            continue
        objs.append(Obj(shape, color, str(rng.choice(SIZES)), positions[len(objs)],
                        dx=float(rng.uniform(-3, 3)), dy=float(rng.uniform(-3, 3)),
                        scale=float(rng.uniform(0.85, 1.15)), angle=float(rng.uniform(-15, 15))))
    objs.sort(key=lambda o: SIZES.index(o.size), reverse=True)  # largest first (stable)
    return Scene(bg, tuple(objs))


def _polygon(cx: float, cy: float, radii: list[float], angle: float, start: float = -90.0) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(math.radians(start + angle + 360 * i / n)),
             cy + r * math.sin(math.radians(start + angle + 360 * i / n))) for i, r in enumerate(radii)]


def _draw(draw: ImageDraw.ImageDraw, o: Obj, bg_rgb: tuple[int, int, int]) -> None:
    s = _SCALE
    cx, cy = (CENTER[o.position][0] + o.dx) * s, (CENTER[o.position][1] + o.dy) * s
    r = RADIUS[o.size] * o.scale * s
    fill = RGB[o.color]
    if o.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif o.shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        ri = r * 0.55
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=bg_rgb)
    elif o.shape == "square":
        draw.polygon(_polygon(cx, cy, [r * 0.9 * math.sqrt(2)] * 4, o.angle, start=-45.0), fill=fill)
    elif o.shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, [r * 1.1] * 3, o.angle), fill=fill)
    elif o.shape == "star":
        draw.polygon(_polygon(cx, cy, [r * 1.1, r * 0.45] * 5, o.angle), fill=fill)
    elif o.shape == "cross":
        w = r * 0.36  # half arm width; arms are a rotated square-ish plus sign
        pts = [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r)]
        a = math.radians(o.angle)
        draw.polygon([(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in pts],
                     fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render(scene: Scene) -> Image.Image:
    """Render a scene as a 64x64 RGB image (drawn at 4x and box-downsampled)."""
    big = IMAGE_SIZE * _SCALE
    bg_rgb = RGB[scene.background]
    img = Image.new("RGB", (big, big), bg_rgb)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, bg_rgb)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def caption(scene: Scene, template: str = TEMPLATES[0]) -> str:
    """Fill a template from the scene; single-object templates describe objects[0]."""
    o = scene.objects[0]
    fields = dict(color=o.color, shape=o.shape, size=o.size, position=o.position, bg=scene.background)
    if "{shape2}" in template or "{color2}" in template:
        if len(scene.objects) < 2:
            raise ValueError("template needs two objects")
        o2 = scene.objects[1]
        fields.update(color2=o2.color, shape2=o2.shape, size2=o2.size, position2=o2.position)
    return template.format(**fields)


def sample(seed: int, n: int, n_objects: int | None = 1) -> tuple[list[Image.Image], list[Scene]]:
    """Deterministically draw n scenes (n_objects=None: 1 or 2 at random) and render them."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, n_objects if n_objects else int(rng.integers(1, 3))) for _ in range(n)]
    return [render(s) for s in scenes], scenes
