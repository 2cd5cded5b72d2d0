"""Procedural smoking / not-smoking scenes: the data set a fresh machine trains on.

Each image is a drawn scene of one person. In `smoking/` the person holds a cigarette (paper,
filter, glowing ember, curling smoke) at the mouth or in a hand; in `notsmoking/` the same
generator draws the things that fool real models instead: pens with orange caps, white and
striped straws, lollipops, phones, steaming cups, a finger at the lips, or nothing. Background,
person, pose, light, haze, background candles and lamps and every other nuisance come from the
same code with the same probabilities for both classes, so only the cigarette tells them apart.

Every image has its own random generator seeded from (seed, split, class, index), so the output
is byte-identical for the same arguments, whatever the order or number of images drawn.

Run:
    python -m training.synthetic --out data/synthetic --seed 0

It does not imitate real photos closely: a model trained only on it still has to be checked on
real photos, and it never replaces them.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm import tqdm

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASS_DIRS = ("notsmoking", "smoking")  # the index is the label
DEFAULT_COUNTS = {"train": 800, "val": 150, "test": 150}  # images per class
RECORD_NAME = "synthetic.json"
GENERATOR_VERSION = 1  # raise whenever a change alters the drawn pixels
MIN_SIZE, MAX_SIZE = 32, 512
SUPERSAMPLE = 2  # scenes are drawn this many times larger, then reduced for anti-aliasing
JPEG_QUALITY = (35, 95)

Colour = tuple[int, int, int]
Point = tuple[float, float]

SKIN_TONES: tuple[Colour, ...] = (
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 103),
    (161, 102, 71), (124, 80, 54), (94, 60, 42), (66, 44, 32),
)  # fmt: skip
HAIR_COLOURS: tuple[Colour, ...] = (
    (20, 17, 15), (45, 32, 24), (85, 60, 40), (130, 95, 60),
    (200, 170, 110), (150, 70, 35), (150, 150, 150), (225, 222, 215),
)  # fmt: skip
WARM_LIGHTS: tuple[Colour, ...] = ((255, 150, 50), (255, 110, 30), (255, 200, 90), (255, 70, 40))
PAPER = (240, 238, 230)
FILTER_TAN = (205, 140, 75)
EMBER = (255, 110, 25)

# The object that takes the cigarette's place in a not-smoking scene, per place.
MOUTH_CONFOUNDERS = {
    "pen": 0.2,
    "lollipop": 0.16,
    "straw": 0.14,
    "cup": 0.14,
    "finger": 0.12,
    "phone": 0.1,
    "none": 0.14,
}
HAND_CONFOUNDERS = {
    "pen": 0.22,
    "lollipop": 0.14,
    "straw": 0.1,
    "cup": 0.16,
    "phone": 0.18,
    "empty": 0.12,
    "none": 0.08,
}
STICK_LENGTH = (1.4, 1.9)  # a held stick, in head radii, before its own length factor


@dataclass(frozen=True)
class Canvas:
    """The supersampled scene and its light layers, composited at the end."""

    image: Image.Image
    draw: ImageDraw.ImageDraw
    smoke: Image.Image  # "L": smoke, steam and fog opacity
    smoke_draw: ImageDraw.ImageDraw
    glow: Image.Image  # "RGB": light added on top (embers, flames, lamps)
    glow_draw: ImageDraw.ImageDraw

    @property
    def width(self) -> int:
        return self.image.width


@dataclass(frozen=True)
class Head:
    """A head ellipse; `at(u, v)` maps head units (radii) to canvas pixels, tilt included."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float

    def at(self, u: float, v: float) -> Point:
        x, y = u * self.rx, v * self.ry
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return (self.cx + x * cos - y * sin, self.cy + x * sin + y * cos)


@dataclass(frozen=True)
class Person:
    """What the objects need to know about the drawn person."""

    head: Head
    yaw: float  # horizontal shift of the face features, in head radii
    skin: Colour
    lips: Colour
    sleeve: Colour

    def shoulder(self, side: int) -> Point:
        return (self.head.cx + side * 1.9 * self.head.rx, self.head.cy + 2.1 * self.head.ry)

    @property
    def mouth(self) -> Point:
        return self.head.at(self.yaw * 1.1, 0.55)


@dataclass(frozen=True)
class Grip:
    """A hand holding an object along `angle` at `point`; the palm lies on the `sign` side."""

    point: Point
    angle: float
    sign: int
    size: float
    two_fingers: bool


# ---------------------------------------------------------------- small drawing helpers


def mix(a: Colour, b: Colour, t: float) -> Colour:
    """Blends two colours; t=0 gives a, t=1 gives b."""
    return tuple(int(x + (y - x) * t + 0.5) for x, y in zip(a, b, strict=True))


def jitter(rng: np.random.Generator, colour: Colour, amount: float) -> Colour:
    """Shifts each channel of a colour by up to `amount`."""
    return tuple(int(np.clip(x + rng.uniform(-amount, amount), 0, 255)) for x in colour)


def random_colour(
    rng: np.random.Generator,
    sat: tuple[float, float] = (0.2, 0.9),
    val: tuple[float, float] = (0.2, 0.95),
) -> Colour:
    """Draws a colour of any hue with saturation and value in the given ranges."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return tuple(int(255 * x) for x in rgb)


def pick(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    """Draws one key of `weights` with probability proportional to its value."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def offset(p: Point, angle: float, distance: float) -> Point:
    """Moves a point by `distance` pixels along `angle` (radians, y pointing down)."""
    return (p[0] + distance * math.cos(angle), p[1] + distance * math.sin(angle))


def ellipse_points(centre: Point, rx: float, ry: float, angle: float, n: int = 28) -> list[Point]:
    """Returns the outline of a rotated ellipse as a polygon."""
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos))
    return points


def disc(
    draw: ImageDraw.ImageDraw, centre: Point, rx: float, fill: tuple, ry: float | None = None
) -> None:
    """Draws a filled upright ellipse around `centre`, a circle when `ry` is None."""
    ry = rx if ry is None else ry
    draw.ellipse((centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry), fill=fill)


def stroke(draw: ImageDraw.ImageDraw, points: list[Point], width: float, fill: tuple) -> None:
    """Draws a polyline with round joints and round ends."""
    w = max(1, int(width + 0.5))
    draw.line(points, fill=fill, width=w, joint="curve")
    r = w / 2
    for x, y in (points[0], points[-1]):
        disc(draw, (x, y), r, fill)


def outlined_stroke(c: Canvas, points: list[Point], width: float, fill: Colour) -> None:
    """Draws a skin-like stroke with a thin darker edge, so fingers read as separate."""
    stroke(c.draw, points, width + max(1.5, c.width * 0.006), mix(fill, (0, 0, 0), 0.35))
    stroke(c.draw, points, width, fill)


def band(start: Point, angle: float, t0: float, t1: float, width: float) -> list[Point]:
    """Returns the quadrilateral covering [t0, t1] pixels along a stick of the given width."""
    nx, ny = -math.sin(angle) * width / 2, math.cos(angle) * width / 2
    a, b = offset(start, angle, t0), offset(start, angle, t1)
    return [
        (a[0] + nx, a[1] + ny),
        (b[0] + nx, b[1] + ny),
        (b[0] - nx, b[1] - ny),
        (a[0] - nx, a[1] - ny),
    ]


def paint_stick(
    c: Canvas, start: Point, angle: float, width: float, segments: list[tuple[float, float, Colour]]
) -> None:
    """Draws a cylinder as coloured bands (pixel ranges from `start`), edged and highlighted."""
    edge = max(1.0, c.width * 0.005)
    ends = (segments[0][0] - edge, segments[-1][1] + edge)
    c.draw.polygon(
        band(start, angle, *ends, width + 2 * edge), fill=mix(segments[0][2], (0, 0, 0), 0.5)
    )
    for t0, t1, colour in segments:
        c.draw.polygon(band(start, angle, t0, t1, width), fill=colour)
        side = offset(start, angle + math.pi / 2, -width * 0.22)
        c.draw.polygon(
            band(side, angle, t0, t1, width * 0.25), fill=mix(colour, (255, 255, 255), 0.3)
        )


# ---------------------------------------------------------------- backgrounds


def gradient(width: int, c0: Colour, c1: Colour, angle: float) -> Image.Image:
    """Returns a linear gradient from c0 to c1 across the canvas along `angle`."""
    n = 16
    y, x = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
    t = np.clip(x * math.cos(angle) + y * math.sin(angle) + 0.5, 0, 1)[..., None]
    small = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    return Image.fromarray(small.astype(np.uint8)).resize((width, width), Image.BILINEAR)


def paint_room(c: Canvas, rng: np.random.Generator) -> None:
    """An indoor wall with a floor, a window with white bars, frames, shelves or a door."""
    w = c.width
    wall = random_colour(rng, (0.05, 0.5), (0.35, 0.95))
    c.image.paste(gradient(w, wall, mix(wall, (0, 0, 0), rng.uniform(0, 0.4)), rng.uniform(0, 6.3)))
    floor_y = w * rng.uniform(0.65, 0.95)
    c.draw.rectangle((0, floor_y, w, w), fill=random_colour(rng, (0.1, 0.6), (0.15, 0.6)))
    for _ in range(rng.integers(1, 4)):
        x0, y0 = w * rng.uniform(-0.1, 0.8), w * rng.uniform(-0.1, 0.5)
        x1, y1 = x0 + w * rng.uniform(0.15, 0.45), y0 + w * rng.uniform(0.15, 0.5)
        kind = rng.integers(3)
        if kind == 0:  # window
            c.draw.rectangle((x0, y0, x1, y1), fill=random_colour(rng, (0.1, 0.5), (0.7, 1.0)))
            frame = jitter(rng, (235, 235, 230), 20)
            bar = max(2, w * 0.012)
            c.draw.rectangle((x0, y0, x1, y1), outline=frame, width=int(bar))
            c.draw.line(((x0 + x1) / 2, y0, (x0 + x1) / 2, y1), fill=frame, width=int(bar))
        elif kind == 1:  # picture frame or door
            c.draw.rectangle(
                (x0, y0, x1, y1),
                fill=random_colour(rng),
                outline=random_colour(rng),
                width=int(w * 0.01) + 1,
            )
        else:  # shelf with objects
            c.draw.rectangle((x0, y1, x1, y1 + w * 0.02), fill=random_colour(rng, val=(0.2, 0.6)))
            for _ in range(rng.integers(2, 6)):
                bx = rng.uniform(x0, x1)
                bh = w * rng.uniform(0.04, 0.12)
                c.draw.rectangle((bx, y1 - bh, bx + w * 0.025, y1), fill=random_colour(rng))


def paint_outdoors(c: Canvas, rng: np.random.Generator) -> None:
    """Sky, ground, buildings with lit and dark windows, and trees."""
    w = c.width
    sky = random_colour(rng, (0.1, 0.6), (0.5, 1.0))
    c.image.paste(gradient(w, sky, jitter(rng, (235, 235, 240), 30), math.pi / 2))
    horizon = w * rng.uniform(0.45, 0.8)
    c.draw.rectangle((0, horizon, w, w), fill=random_colour(rng, (0.1, 0.6), (0.2, 0.6)))
    for _ in range(rng.integers(0, 5)):
        x0, top = w * rng.uniform(-0.1, 0.9), horizon - w * rng.uniform(0.1, 0.5)
        x1 = x0 + w * rng.uniform(0.1, 0.3)
        c.draw.rectangle((x0, top, x1, horizon), fill=random_colour(rng, (0.0, 0.4), (0.2, 0.7)))
        for _ in range(rng.integers(0, 6)):
            wx, wy = rng.uniform(x0, x1 - w * 0.03), rng.uniform(top, horizon - w * 0.03)
            lit = rng.random() < 0.5
            fill = WARM_LIGHTS[rng.integers(len(WARM_LIGHTS))] if lit else (40, 45, 55)
            c.draw.rectangle((wx, wy, wx + w * 0.025, wy + w * 0.03), fill=fill)
    for _ in range(rng.integers(0, 4)):
        tx, ty, tr = (
            w * rng.uniform(0, 1),
            horizon - w * rng.uniform(0, 0.2),
            w * rng.uniform(0.05, 0.15),
        )
        disc(c.draw, (tx, ty), tr, random_colour(rng, (0.4, 0.8), (0.2, 0.6)))


def paint_texture(c: Canvas, rng: np.random.Generator) -> None:
    """Smooth coloured noise, like a wall texture or out-of-focus foliage."""
    w = c.width
    tint = np.asarray(random_colour(rng, (0.1, 0.7), (0.3, 0.9)), np.float32)
    cells = int(rng.integers(3, 12))
    coarse = rng.normal(0, 1, (cells, cells, 1)) + rng.normal(0, 0.35, (cells, cells, 3))
    fine = rng.normal(0, 1, (cells * 4, cells * 4, 1)).astype(np.float32)
    spread = rng.uniform(20, 70)
    coarse_img = Image.fromarray(np.clip(tint + coarse * spread, 0, 255).astype(np.uint8))
    fine_img = Image.fromarray(np.clip(128 + fine[..., 0] * 25, 0, 255).astype(np.uint8))
    base = coarse_img.resize((w, w), Image.BICUBIC)
    grain = fine_img.resize((w, w), Image.BICUBIC).convert("RGB")
    c.image.paste(ImageChops.overlay(base, grain))


def paint_bokeh(c: Canvas, rng: np.random.Generator) -> None:
    """Blurred discs of light over a gradient, like a night street or a bar."""
    w = c.width
    dark = random_colour(rng, (0.1, 0.7), (0.05, 0.5))
    layer = gradient(w, dark, random_colour(rng, (0.1, 0.7), (0.1, 0.6)), rng.uniform(0, 6.3))
    draw = ImageDraw.Draw(layer, "RGBA")
    for _ in range(rng.integers(5, 16)):
        warm = rng.random() < 0.35
        colour = WARM_LIGHTS[rng.integers(len(WARM_LIGHTS))] if warm else random_colour(rng)
        x, y, r = w * rng.uniform(0, 1), w * rng.uniform(0, 1), w * rng.uniform(0.02, 0.09)
        disc(draw, (x, y), r, (*colour, int(rng.integers(90, 230))))
    c.image.paste(soften(layer, w * rng.uniform(0.01, 0.03)))


def paint_plain(c: Canvas, rng: np.random.Generator) -> None:
    """A flat colour or a two-colour gradient, like a studio backdrop."""
    c0 = random_colour(rng, (0.0, 0.8), (0.1, 1.0))
    c1 = c0 if rng.random() < 0.35 else random_colour(rng, (0.0, 0.8), (0.1, 1.0))
    c.image.paste(gradient(c.width, c0, c1, rng.uniform(0, 6.3)))


BACKGROUNDS: dict[str, tuple[float, Callable[[Canvas, np.random.Generator], None]]] = {
    "plain": (0.28, paint_plain),
    "room": (0.24, paint_room),
    "outdoors": (0.16, paint_outdoors),
    "texture": (0.16, paint_texture),
    "bokeh": (0.16, paint_bokeh),
}


def paint_candle(c: Canvas, rng: np.random.Generator, x: float, base: float, height: float) -> None:
    """A white candle with a flame and its glow."""
    width = height * rng.uniform(0.15, 0.35)
    wax = jitter(rng, (238, 232, 215), 15)
    c.draw.rectangle((x - width / 2, base - height, x + width / 2, base), fill=wax)
    fx, fy, fr = x, base - height - width * 0.6, width * 0.35
    c.draw.ellipse((fx - fr, fy - 2 * fr, fx + fr, fy + fr), fill=(255, 190, 70))
    glow = WARM_LIGHTS[rng.integers(len(WARM_LIGHTS))]
    gr = width * 1.3
    disc(c.glow_draw, (fx, fy), gr, glow)


def paint_background_lights(c: Canvas, rng: np.random.Generator) -> None:
    """Candles and warm lamps behind the person, in either class."""
    w = c.width
    if rng.random() < 0.08:
        for _ in range(rng.integers(1, 4)):
            x, base = w * rng.uniform(0.05, 0.95), w * rng.uniform(0.5, 1.0)
            paint_candle(c, rng, x, base, w * rng.uniform(0.06, 0.2))
    if rng.random() < 0.15:
        for _ in range(rng.integers(1, 4)):
            x, y, r = w * rng.uniform(0, 1), w * rng.uniform(0, 0.7), w * rng.uniform(0.01, 0.035)
            colour = WARM_LIGHTS[rng.integers(len(WARM_LIGHTS))]
            disc(c.draw, (x, y), r, mix(colour, (255, 255, 230), 0.5))
            disc(c.glow_draw, (x, y), 2.5 * r, colour)


def paint_background(c: Canvas, rng: np.random.Generator) -> None:
    """Fills the canvas with one of the background kinds, then adds background lights."""
    kinds = {name: weight for name, (weight, _) in BACKGROUNDS.items()}
    BACKGROUNDS[pick(rng, kinds)][1](c, rng)
    paint_background_lights(c, rng)
    flush_glow(c, rng)


def soften(layer: Image.Image, radius: float, factor: int = 4) -> Image.Image:
    """A wide Gaussian blur computed at 1/factor of the size, at a fraction of the cost."""
    small = layer.reduce(factor).filter(ImageFilter.GaussianBlur(radius / factor))
    return small.resize(layer.size, Image.BILINEAR)


def flush_glow(c: Canvas, rng: np.random.Generator) -> None:
    """Adds the blurred glow layer onto the image and clears it, so later paint covers it."""
    if c.glow.getbbox() is None:
        return
    glow = soften(c.glow, c.width * rng.uniform(0.01, 0.02))
    c.image.paste(ImageChops.add(c.image, glow))
    c.glow.paste((0, 0, 0), (0, 0, c.width, c.width))


# ---------------------------------------------------------------- the person


def choose_head(rng: np.random.Generator, width: int) -> Head:
    """Places, sizes and tilts the head, from close-up faces to head-and-shoulders shots."""
    rx = width * math.exp(rng.uniform(math.log(0.15), math.log(0.32)))
    ry = rx * rng.uniform(1.18, 1.38)
    cx = width * rng.uniform(0.3, 0.7)
    cy = width * rng.uniform(0.28, 0.5)
    cy = min(cy, width * 0.9 - 0.7 * ry)
    angle = math.radians(float(np.clip(rng.normal(0, 10), -25, 25)))
    return Head(cx, cy, rx, ry, angle)


def choose_clothes(rng: np.random.Generator) -> Colour:
    """Clothes colours, with white, black and orange common enough to share the ember's hues."""
    roll = rng.random()
    if roll < 0.12:
        return jitter(rng, (235, 235, 235), 15)
    if roll < 0.25:
        return jitter(rng, (30, 30, 35), 15)
    if roll < 0.33:
        return jitter(rng, (230, 110, 40), 25)
    return random_colour(rng)


def paint_torso(
    c: Canvas, rng: np.random.Generator, head: Head, skin: Colour, cloth: Colour
) -> None:
    """Shoulders and chest in clothes, a neck and a neckline."""
    w = c.width
    sw, top = head.rx * rng.uniform(1.9, 2.5), head.cy + head.ry * rng.uniform(1.45, 1.75)
    c.draw.ellipse((head.cx - sw, top, head.cx + sw, top + sw * 1.1), fill=cloth)
    c.draw.rectangle((head.cx - sw, top + sw * 0.55, head.cx + sw, max(w, top + sw)), fill=cloth)
    if rng.random() < 0.35:  # a jacket open over a shirt
        shirt = choose_clothes(rng)
        c.draw.polygon(
            [(head.cx - sw * 0.35, top), (head.cx + sw * 0.35, top), (head.cx, w + 4)], fill=shirt
        )
    neck = mix(skin, (0, 0, 0), 0.15)
    nx = head.rx * 0.42
    c.draw.polygon(
        [
            head.at(-0.45, 0.5),
            head.at(0.45, 0.5),
            (head.cx + nx, top + head.ry * 0.2),
            (head.cx - nx, top + head.ry * 0.2),
        ],
        fill=neck,
    )
    depth = head.ry * rng.uniform(0.1, 0.5)
    c.draw.polygon(
        [(head.cx - nx * 1.3, top), (head.cx + nx * 1.3, top), (head.cx, top + depth)], fill=neck
    )


def paint_hair(c: Canvas, rng: np.random.Generator, head: Head, hair: Colour, back: bool) -> None:
    """Long hair behind the head (`back`), or the hair on top of the head and the fringe."""
    if back:
        length = rng.uniform(1.4, 3.0)
        outline = [
            head.at(1.12 * math.cos(t), 1.08 * math.sin(t))
            for t in np.linspace(math.pi, 2 * math.pi, 12)
        ]
        outline += [head.at(1.25, length), head.at(-1.25, length)]
        c.draw.polygon(outline, fill=hair)
        return
    side_v = rng.uniform(-0.25, 0.35)
    fringe_v = rng.uniform(-0.8, -0.45)
    t_left = math.pi - math.asin(side_v / 1.1)
    t_right = 2 * math.pi + math.asin(side_v / 1.1)
    outline = [
        head.at(1.08 * math.cos(t), 1.1 * math.sin(t)) for t in np.linspace(t_left, t_right, 16)
    ]
    part = rng.uniform(-0.5, 0.5)
    for u in np.linspace(0.9, -0.9, 7):
        v = fringe_v + 0.35 * abs(u) ** 2 + rng.uniform(-0.06, 0.06) - 0.1 * (u < part)
        outline.append(head.at(u, min(v, side_v)))
    c.draw.polygon(outline, fill=hair)
    if rng.random() < 0.25:  # curls
        for t in np.linspace(t_left, t_right, 9):
            p, r = head.at(1.05 * math.cos(t), 1.05 * math.sin(t)), head.rx * 0.22
            disc(c.draw, p, r, hair)


def paint_cap(c: Canvas, rng: np.random.Generator, head: Head) -> None:
    """A cap or beanie over the top of the head."""
    colour = choose_clothes(rng)
    top = [
        head.at(1.1 * math.cos(t), 1.1 * math.sin(t))
        for t in np.linspace(math.pi * 1.05, math.pi * 1.95, 12)
    ]
    c.draw.polygon([*top, head.at(1.05, -0.35), head.at(-1.05, -0.35)], fill=colour)
    if rng.random() < 0.5:
        side = 1 if rng.random() < 0.5 else -1
        c.draw.polygon(
            [
                head.at(-1.0 * side, -0.4),
                head.at(1.6 * side, -0.3),
                head.at(1.5 * side, -0.45),
                head.at(-1.0 * side, -0.55),
            ],
            fill=mix(colour, (0, 0, 0), 0.2),
        )


def paint_eyes(c: Canvas, rng: np.random.Generator, head: Head, yaw: float, hair: Colour) -> None:
    """Eyes (open or closed), eyebrows, and sometimes glasses or sunglasses."""
    rx = head.rx
    iris = random_colour(rng, (0.3, 0.8), (0.15, 0.5))
    closed = rng.random() < 0.1
    glasses = rng.random() < 0.22
    shades = glasses and rng.random() < 0.3
    frame = random_colour(rng, (0.0, 0.8), (0.05, 0.6))
    for side in (-1, 1):
        e = head.at(yaw + side * 0.36, -0.02)
        if closed:
            c.draw.line(
                (e[0] - 0.14 * rx, e[1], e[0] + 0.14 * rx, e[1]),
                fill=(40, 30, 30),
                width=max(1, int(rx * 0.04)),
            )
        else:
            disc(c.draw, e, 0.15 * rx, (240, 238, 232), ry=0.07 * rx)
            ix, r = e[0] + yaw * 0.15 * rx, 0.065 * rx
            disc(c.draw, (ix, e[1]), r, iris)
            disc(c.draw, (ix, e[1]), r / 2, (15, 12, 12))
        brow = [
            head.at(yaw + side * 0.2, -0.24),
            head.at(yaw + side * 0.5, -0.22 + rng.uniform(-0.04, 0.03)),
        ]
        stroke(c.draw, brow, rx * 0.07, mix(hair, (0, 0, 0), 0.3))
        if glasses:
            r = 0.22 * rx
            box = (e[0] - r, e[1] - r * 0.8, e[0] + r, e[1] + r * 0.8)
            fill = (20, 22, 28, 220) if shades else None
            c.draw.ellipse(box, fill=fill, outline=frame, width=max(1, int(rx * 0.04)))
    if glasses:
        stroke(c.draw, [head.at(yaw - 0.14, -0.04), head.at(yaw + 0.14, -0.04)], rx * 0.04, frame)


def paint_lower_face(c: Canvas, rng: np.random.Generator, person: Person, hair: Colour) -> None:
    """Nose, lips (closed or open) and sometimes a beard."""
    head, yaw, rx = person.head, person.yaw, person.head.rx
    shade = mix(person.skin, (0, 0, 0), 0.3)
    stroke(c.draw, [head.at(yaw, 0.02), head.at(yaw + 0.08, 0.28)], rx * 0.05, shade)
    for side in (-1, 1):
        n = head.at(yaw + side * 0.09, 0.31)
        disc(c.draw, n, rx * 0.04, shade, ry=rx * 0.025)
    if rng.random() < 0.18:
        beard = mix(hair, person.skin, rng.uniform(0.0, 0.4))
        outline = [
            head.at(1.0 * math.cos(t), 1.0 * math.sin(t))
            for t in np.linspace(0.1, math.pi - 0.1, 12)
        ]
        outline += [head.at(yaw - 0.45, 0.4), head.at(yaw + 0.45, 0.4)]
        c.draw.polygon(outline, fill=(*beard, int(rng.integers(150, 255))))
    m = person.mouth
    open_mouth = rng.random() < 0.12
    ry = 0.13 if open_mouth else 0.07
    disc(c.draw, m, 0.25 * rx, person.lips, ry=ry * rx)
    inner = (m[0] - 0.17 * rx, m[1] - 0.05 * rx, m[0] + 0.17 * rx, m[1] + 0.05 * rx)
    if open_mouth:
        c.draw.ellipse(inner, fill=(50, 20, 25))
    else:
        c.draw.line(
            (inner[0], m[1], inner[2], m[1]),
            fill=mix(person.lips, (0, 0, 0), 0.5),
            width=max(1, int(rx * 0.03)),
        )


def paint_person(c: Canvas, rng: np.random.Generator) -> Person:
    """Draws one person (body, head, face, hair) and returns where the mouth and arms are."""
    head = choose_head(rng, c.width)
    k = rng.uniform(0, len(SKIN_TONES) - 1)
    skin = jitter(rng, mix(SKIN_TONES[int(k)], SKIN_TONES[int(k) + 1], k % 1), 10)
    hair = jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 12)
    lipstick = rng.random() < 0.15
    lips = jitter(rng, (180, 25, 40), 30) if lipstick else mix(skin, (150, 50, 60), 0.35)
    cloth = choose_clothes(rng)
    person = Person(head, rng.uniform(-0.25, 0.25), skin, lips, cloth)
    style = rng.random()
    if style < 0.35:
        paint_hair(c, rng, head, hair, back=True)
    paint_torso(c, rng, head, skin, cloth)
    for side in (-1, 1):  # ears
        disc(
            c.draw,
            head.at(side * 0.97, 0.05),
            0.17 * head.rx,
            mix(skin, (0, 0, 0), 0.1),
            0.27 * head.rx,
        )
    c.draw.polygon(ellipse_points((head.cx, head.cy), head.rx, head.ry, head.angle), fill=skin)
    paint_eyes(c, rng, head, person.yaw, hair)
    paint_lower_face(c, rng, person, hair)
    if style < 0.85:
        paint_hair(c, rng, head, hair, back=False)
    elif style < 0.95:
        paint_cap(c, rng, head)
    return person


# ---------------------------------------------------------------- hands and held objects


def paint_arm(c: Canvas, person: Person, side: int, wrist: Point, width: float) -> None:
    """A sleeve from the shoulder through a lowered elbow to the wrist."""
    shoulder = person.shoulder(side)
    elbow = (
        wrist[0] + side * 0.8 * person.head.rx,
        max(wrist[1], shoulder[1]) + 1.6 * person.head.rx,
    )
    stroke(c.draw, [shoulder, elbow, wrist], width, person.sleeve)


def choose_grip(
    rng: np.random.Generator, person: Person, point: Point, angle: float, side: int
) -> Grip:
    """A hand around `point`, the palm towards the shoulder on `side`."""
    shoulder = person.shoulder(side)
    nx, ny = -math.sin(angle), math.cos(angle)
    sign = 1 if nx * (shoulder[0] - point[0]) + ny * (shoulder[1] - point[1]) > 0 else -1
    size = person.head.rx * rng.uniform(0.65, 0.8)
    return Grip(point, angle, sign, size, two_fingers=rng.random() < 0.7)


def paint_palm(c: Canvas, person: Person, grip: Grip, side: int) -> None:
    """The arm and the palm of a grip, drawn before the held object."""
    normal = grip.angle + grip.sign * math.pi / 2
    palm = offset(grip.point, normal, grip.size * 0.55)
    wrist = offset(palm, normal, grip.size * 0.5)
    paint_arm(c, person, side, wrist, grip.size * 0.75)
    c.draw.polygon(
        ellipse_points(palm, grip.size * 0.45, grip.size * 0.4, grip.angle), fill=person.skin
    )


def paint_fingers(c: Canvas, person: Person, grip: Grip, object_width: float) -> None:
    """Fingers wrapped over the held object: a fist, or two fingers with the others curled."""
    normal = grip.angle + grip.sign * math.pi / 2
    palm = offset(grip.point, normal, grip.size * 0.55)
    fw = grip.size * 0.18
    reach = object_width / 2 + grip.size * (0.35 if grip.two_fingers else 0.15)
    shifts = (-0.55, 0.55) if grip.two_fingers else (-1.6, -0.55, 0.55, 1.6)
    for s in shifts:
        base = offset(palm, grip.angle, s * fw)
        tip = offset(offset(grip.point, grip.angle, s * fw), normal, -reach)
        outlined_stroke(c, [base, tip], fw, person.skin)
    if grip.two_fingers:
        for s in (1.7, 2.7):
            base = offset(palm, grip.angle, (s - 0.6) * fw)
            outlined_stroke(c, [base, offset(base, normal, -grip.size * 0.25)], fw, person.skin)
    thumb = offset(palm, grip.angle, -2.2 * fw)
    outlined_stroke(c, [thumb, offset(grip.point, grip.angle, -2.4 * fw)], fw * 1.1, person.skin)


def paint_cigarette(
    c: Canvas, rng: np.random.Generator, start: Point, angle: float, length: float
) -> Point:
    """A cigarette from its filter at `start`; lit ones glow and smoke. Returns the tip."""
    width = max(length / 8, c.width * 0.022)
    filter_colour = jitter(rng, FILTER_TAN if rng.random() < 0.75 else PAPER, 15)
    paper = jitter(rng, PAPER if rng.random() < 0.7 else (232, 222, 196), 8)
    f = length * rng.uniform(0.22, 0.32)
    lit = rng.random() < 0.97
    ash = length * rng.uniform(0.03, 0.14) if lit else 0.0
    segments = [(0.0, f, filter_colour), (f, length - ash, paper)]
    if lit:
        segments.append((length - ash, length, jitter(rng, (150, 146, 138), 20)))
    paint_stick(c, start, angle, width, segments)
    tip = offset(start, angle, length)
    if lit:
        r = width * rng.uniform(0.6, 0.8)
        ember = jitter(rng, EMBER, 25)
        disc(c.draw, tip, r, ember)
        disc(c.draw, tip, r * 0.5, (255, 220, 120))
        g = width * rng.uniform(1.5, 2.2)
        disc(c.glow_draw, tip, g, ember)
        if rng.random() < 0.9:
            for _ in range(rng.integers(1, 4)):
                add_wisp(
                    c, rng, tip, length * rng.uniform(1.2, 3.5), width * 0.8, rng.uniform(150, 240)
                )
    return tip


def paint_pen(
    c: Canvas, rng: np.random.Generator, start: Point, angle: float, length: float
) -> Point:
    """A pen, often white or with an orange or red cap, either end first. Returns the far end."""
    length *= rng.uniform(1.25, 1.6)
    width = max(length / rng.uniform(14, 18), c.width * 0.014)
    roll = rng.random()
    body = (
        jitter(rng, PAPER, 12)
        if roll < 0.35
        else jitter(rng, (30, 40, 120), 30)
        if roll < 0.55
        else random_colour(rng)
    )
    cap = (
        jitter(rng, WARM_LIGHTS[rng.integers(len(WARM_LIGHTS))], 20)
        if rng.random() < 0.5
        else random_colour(rng)
    )
    cap_len = length * rng.uniform(0.12, 0.35)
    tip_len = length * 0.1
    if rng.random() < 0.5:  # cap end away from the holder
        segments = [(0.0, length - cap_len, body), (length - cap_len, length, cap)]
        cone_at, cone_dir = start, angle + math.pi
    else:
        segments = [(0.0, cap_len, cap), (cap_len, length - tip_len, body)]
        cone_at, cone_dir = offset(start, angle, length - tip_len), angle
    paint_stick(c, start, angle, width, segments)
    nx, ny = -math.sin(cone_dir) * width / 2, math.cos(cone_dir) * width / 2
    point = offset(cone_at, cone_dir, tip_len)
    c.draw.polygon(
        [(cone_at[0] + nx, cone_at[1] + ny), (cone_at[0] - nx, cone_at[1] - ny), point],
        fill=jitter(rng, (170, 170, 175), 30),
    )
    clip_from = length - cap_len if segments[-1][2] == cap else 0.0
    clip = offset(start, angle + math.pi / 2, width * 0.6)
    stroke(
        c.draw,
        [
            offset(clip, angle, clip_from + cap_len * 0.15),
            offset(clip, angle, clip_from + cap_len * 0.85),
        ],
        width * 0.3,
        mix(cap, (0, 0, 0), 0.3),
    )
    return offset(start, angle, length)


def paint_straw(
    c: Canvas, rng: np.random.Generator, start: Point, angle: float, length: float
) -> Point:
    """A drinking straw: white, red, orange or striped. Returns the far end."""
    length *= rng.uniform(1.3, 1.8)
    width = max(length / rng.uniform(22, 30), c.width * 0.01)
    colour = (
        jitter(rng, PAPER, 10)
        if rng.random() < 0.4
        else jitter(rng, WARM_LIGHTS[rng.integers(4)], 25)
    )
    if rng.random() < 0.5:
        stripe = jitter(rng, (215, 35, 35), 30) if rng.random() < 0.7 else random_colour(rng)
        period = width * rng.uniform(1.5, 3.0)
        edges = np.arange(0.0, length, period)
        segments = [
            (t, min(t + period, length), stripe if k % 2 else colour) for k, t in enumerate(edges)
        ]
    else:
        segments = [(0.0, length, colour)]
    paint_stick(c, start, angle, width, segments)
    return offset(start, angle, length)


def paint_lollipop(
    c: Canvas, rng: np.random.Generator, start: Point, angle: float, length: float
) -> Point:
    """A white stick with a candy ball at `start`, in the mouth or held out. Returns the end."""
    width = max(length / rng.uniform(18, 24), c.width * 0.01)
    paint_stick(c, start, angle, width, [(0.0, length, jitter(rng, PAPER, 10))])
    roll = rng.random()
    candy = (
        jitter(rng, WARM_LIGHTS[rng.integers(4)], 25)
        if roll < 0.5
        else random_colour(rng, (0.5, 1.0), (0.6, 1.0))
    )
    r = width * rng.uniform(2.2, 3.4)
    ball = offset(start, angle, -r * 0.6)
    disc(c.draw, ball, r, candy)
    hr = r * 0.35
    c.draw.ellipse(
        (ball[0] - hr * 1.5, ball[1] - hr * 1.5, ball[0] - hr * 0.3, ball[1] - hr * 0.3),
        fill=mix(candy, (255, 255, 255), 0.5),
    )
    return offset(start, angle, length)


STICK_PAINTERS = {
    "cigarette": paint_cigarette,
    "pen": paint_pen,
    "straw": paint_straw,
    "lollipop": paint_lollipop,
}


def paint_cup(
    c: Canvas, rng: np.random.Generator, rim: Point, angle: float, size: float, steam: bool
) -> None:
    """A cup or mug whose rim centre is `rim` and whose bottom lies along `angle`."""
    colour = jitter(rng, PAPER, 15) if rng.random() < 0.4 else random_colour(rng)
    height = size * rng.uniform(0.9, 1.3)
    across = angle + math.pi / 2
    bottom = offset(rim, angle, height)
    top_l, top_r = offset(rim, across, size / 2), offset(rim, across, -size / 2)
    bot_l, bot_r = offset(bottom, across, size * 0.4), offset(bottom, across, -size * 0.4)
    handle_side = 1 if rng.random() < 0.5 else -1
    h0 = offset(offset(rim, angle, height * 0.25), across, handle_side * size * 0.47)
    h1 = offset(offset(rim, angle, height * 0.75), across, handle_side * size * 0.42)
    bulge = offset(offset(rim, angle, height * 0.5), across, handle_side * size * 0.75)
    stroke(c.draw, [h0, bulge, h1], size * 0.12, mix(colour, (0, 0, 0), 0.15))
    c.draw.polygon([top_l, top_r, bot_r, bot_l], fill=colour)
    drink = jitter(rng, (70, 40, 25), 25)
    c.draw.polygon(ellipse_points(rim, size / 2, size * 0.12, across), fill=mix(colour, drink, 0.8))
    if steam:
        for _ in range(rng.integers(1, 4)):
            start = offset(rim, across, rng.uniform(-0.3, 0.3) * size)
            add_wisp(c, rng, start, size * rng.uniform(1.0, 2.5), size * 0.08, rng.uniform(70, 170))


def paint_phone(
    c: Canvas, rng: np.random.Generator, centre: Point, angle: float, size: float, back: bool
) -> None:
    """A phone along `angle`; its lit or dark screen, or its back with a camera when `back`."""
    length, width = size * 1.7, size * 0.82
    case = jitter(rng, (25, 25, 30), 15) if rng.random() < 0.5 else random_colour(rng)
    start = offset(centre, angle, -length / 2)
    c.draw.polygon(band(start, angle, 0, length, width), fill=case)
    if back:
        lens = offset(offset(start, angle, length * 0.85), angle + math.pi / 2, width * 0.25)
        r = width * 0.12
        disc(c.draw, lens, r, (10, 10, 12))
        return
    lit = rng.random() < 0.5
    screen = random_colour(rng, (0.0, 0.4), (0.8, 1.0)) if lit else jitter(rng, (25, 28, 35), 10)
    c.draw.polygon(band(start, angle, length * 0.06, length * 0.94, width * 0.86), fill=screen)


def add_wisp(
    c: Canvas, rng: np.random.Generator, start: Point, height: float, width: float, strength: float
) -> None:
    """Adds a rising, curling, widening and fading trail of smoke or steam to the smoke layer."""
    steps = 14
    phase, turns = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 1.5)
    sway, drift = height * rng.uniform(0.05, 0.22), height * rng.uniform(-0.5, 0.5)
    previous = start
    for k in range(1, steps + 1):
        t = k / steps
        x = start[0] + drift * t * t + sway * t * math.sin(phase + 2 * math.pi * turns * t)
        point = (x, start[1] - height * t)
        fill = int(strength * (1 - t) ** 0.8)
        stroke(c.smoke_draw, [previous, point], width * (1 + 3 * t), fill)
        previous = point


# ---------------------------------------------------------------- placing objects on the person


@dataclass(frozen=True)
class Plan:
    """What the scene holds: the main object (a cigarette or its stand-in) and where."""

    main: str
    at_mouth: bool
    side: int  # +1 right of the face, -1 left
    extra: str  # something in the other hand, in either class ("none" for nothing)


def plan_objects(rng: np.random.Generator, smoking: bool, person: Person, width: int) -> Plan:
    """Draws the objects of a scene with the same draws for both classes.

    The stand-in is drawn in every scene and then replaced by the cigarette when smoking, so
    the place, the side and the extra object have the same distribution in both classes.
    """
    at_mouth = rng.random() < 0.5
    toward_centre = 1 if person.head.cx < width / 2 else -1
    side = toward_centre if rng.random() < 0.75 else -toward_centre
    stand_in = pick(rng, MOUTH_CONFOUNDERS if at_mouth else HAND_CONFOUNDERS)
    extra = pick(rng, HAND_CONFOUNDERS) if rng.random() < 0.15 else "none"
    return Plan("cigarette" if smoking else stand_in, at_mouth, side, extra)


def mouth_angle(rng: np.random.Generator, person: Person, side: int) -> tuple[float, float]:
    """The direction of a stick held in the lips and how much of its length shows."""
    if rng.random() < 0.08:  # pointing at the camera, foreshortened
        return math.pi / 2 + rng.uniform(-0.4, 0.4), 0.5
    droop = math.radians(rng.uniform(-20, 65))
    angle = droop if side > 0 else math.pi - droop
    return angle + person.head.angle, 1.0


def keep_inside(start: Point, angle: float, length: float, width: int) -> float:
    """Mirrors a stick's direction when its far end would leave the canvas, if that helps."""
    for candidate in (angle, math.pi - angle, -angle, math.pi + angle):
        end = offset(start, candidate, length)
        if 0.04 * width < end[0] < 0.96 * width and 0.04 * width < end[1] < 0.96 * width:
            return candidate
    return angle


def paint_at_mouth(
    c: Canvas, rng: np.random.Generator, person: Person, kind: str, side: int
) -> None:
    """Puts `kind` at the lips, held by a hand some of the time."""
    head, rx = person.head, person.head.rx
    if kind in STICK_PAINTERS:
        angle, shown = mouth_angle(rng, person, side)
        length = rx * rng.uniform(*STICK_LENGTH) * shown
        angle = keep_inside(person.mouth, angle, length, c.width)
        start = offset(person.mouth, angle, 0.12 * rx)
        with_hand = rng.random() < 0.45
        grip = choose_grip(rng, person, offset(start, angle, length * 0.3), angle, side)
        if with_hand:
            paint_palm(c, person, grip, side)
        STICK_PAINTERS[kind](c, rng, start, angle, length)
        r = rx * 0.08
        disc(c.draw, start, r, person.lips)
        if with_hand:
            paint_fingers(c, person, grip, length / 10)
    elif kind == "cup":
        angle = math.pi / 2 - side * rng.uniform(0.3, 0.9) + head.angle
        size = rx * rng.uniform(0.8, 1.1)
        rim = offset(person.mouth, angle, -0.1 * rx)
        grip = choose_grip(rng, person, offset(rim, angle, size * 0.6), angle, side)
        paint_palm(c, person, grip, side)
        paint_cup(c, rng, rim, angle, size, steam=rng.random() < 0.3)
        paint_fingers(c, person, grip, size)
    elif kind == "phone":
        centre = head.at(side * 0.95, 0.15)
        angle = head.angle - math.pi / 2 + side * rng.uniform(-0.5, 0.2)
        grip = choose_grip(rng, person, offset(centre, angle, -rx * 0.35), angle, side)
        paint_palm(c, person, grip, side)
        paint_phone(c, rng, centre, angle, rx, back=True)
        paint_fingers(c, person, grip, rx * 0.8)
    elif kind == "finger":
        paint_finger_at_lips(c, rng, person, side)


def paint_finger_at_lips(c: Canvas, rng: np.random.Generator, person: Person, side: int) -> None:
    """A hand below the chin with the index finger raised to the lips."""
    head, rx = person.head, person.head.rx
    palm = head.at(person.yaw + side * 0.2, rng.uniform(1.3, 1.6))
    size = rx * rng.uniform(0.8, 1.0)
    paint_arm(c, person, side, offset(palm, math.pi / 2, size * 0.4), size * 0.75)
    c.draw.polygon(ellipse_points(palm, size * 0.4, size * 0.45, head.angle), fill=person.skin)
    tip = head.at(person.yaw + side * rng.uniform(0.0, 0.15), rng.uniform(0.45, 0.6))
    outlined_stroke(c, [offset(palm, -math.pi / 2, size * 0.2), tip], size * 0.21, person.skin)
    for s in (0.5, 1.5):
        knuckle = offset(palm, 0, -side * s * size * 0.22)
        outlined_stroke(
            c, [knuckle, offset(knuckle, -math.pi / 2, size * 0.18)], size * 0.21, person.skin
        )


def hand_point(rng: np.random.Generator, person: Person, side: int, width: int) -> Point:
    """Where a held object is: raised beside the face or lower, in front of the chest."""
    if rng.random() < 0.5:
        p = person.head.at(side * rng.uniform(1.3, 2.1), rng.uniform(0.0, 1.2))
    else:
        p = person.head.at(side * rng.uniform(0.2, 1.6), rng.uniform(1.8, 2.8))
    return (
        float(np.clip(p[0], 0.1 * width, 0.9 * width)),
        float(np.clip(p[1], 0.1 * width, 0.9 * width)),
    )


def paint_in_hand(
    c: Canvas, rng: np.random.Generator, person: Person, kind: str, side: int
) -> None:
    """Puts `kind` in a hand beside the face or in front of the chest; "empty" is a bare hand."""
    if kind == "none":
        return
    rx = person.head.rx
    point = hand_point(rng, person, side, c.width)
    angle = (
        -math.pi / 2 + rng.uniform(-1.3, 1.3)
        if rng.random() < 0.75
        else rng.uniform(0, 2 * math.pi)
    )
    length = rx * rng.uniform(*STICK_LENGTH)
    held_at = length * rng.uniform(0.1, 0.25)
    if kind in STICK_PAINTERS:
        angle = keep_inside(point, angle, length - held_at, c.width)
    grip = choose_grip(rng, person, point, angle, side)
    paint_palm(c, person, grip, side)
    if kind in STICK_PAINTERS:
        STICK_PAINTERS[kind](c, rng, offset(point, angle, -held_at), angle, length)
        paint_fingers(c, person, grip, length / 10)
    elif kind == "cup":
        size = rx * rng.uniform(0.8, 1.1)
        paint_cup(
            c,
            rng,
            offset(point, math.pi / 2, -size * 0.5),
            math.pi / 2,
            size,
            steam=rng.random() < 0.5,
        )
        paint_fingers(c, person, Grip(point, math.pi / 2, grip.sign, grip.size, False), size)
    elif kind == "phone":
        paint_phone(c, rng, offset(point, angle, rx * 0.3), angle, rx, back=rng.random() < 0.5)
        paint_fingers(c, person, grip, rx * 0.8)
    else:
        paint_fingers(c, person, grip, 0.0)


def paint_objects(c: Canvas, rng: np.random.Generator, person: Person, plan: Plan) -> None:
    """Paints the extra object in the other hand, then the main object."""
    paint_in_hand(c, rng, person, plan.extra, -plan.side)
    if plan.at_mouth:
        paint_at_mouth(c, rng, person, plan.main, plan.side)
    else:
        paint_in_hand(c, rng, person, plan.main, plan.side)


# ---------------------------------------------------------------- air, light and camera


def paint_air(c: Canvas, rng: np.random.Generator) -> None:
    """Steam wisps and soft puffs with no cigarette, in either class."""
    w = c.width
    if rng.random() < 0.15:
        for _ in range(rng.integers(1, 4)):
            x, y, r = w * rng.uniform(0, 1), w * rng.uniform(0, 0.8), w * rng.uniform(0.04, 0.15)
            disc(c.smoke_draw, (x, y), r, int(rng.uniform(40, 140)), ry=r * 0.7)
    if rng.random() < 0.2:
        for _ in range(rng.integers(1, 4)):
            start = (w * rng.uniform(0.05, 0.95), w * rng.uniform(0.4, 1.0))
            add_wisp(c, rng, start, w * rng.uniform(0.15, 0.45), w * 0.006, rng.uniform(90, 210))


def composite_light(c: Canvas, rng: np.random.Generator) -> Image.Image:
    """Reduces the canvas to its final size, then adds smoke, haze sometimes, and glow."""
    image = c.image.reduce(SUPERSAMPLE)
    w = image.width
    smoke_colour = jitter(rng, (225, 226, 232), 20)
    blur = w * rng.uniform(0.006, 0.014)
    if c.smoke.getbbox() is not None:
        smoke = c.smoke.reduce(SUPERSAMPLE).filter(ImageFilter.GaussianBlur(blur))
        image = Image.composite(Image.new("RGB", image.size, smoke_colour), image, smoke)
    if rng.random() < 0.18:
        cells = int(rng.integers(2, 6))
        fog = rng.uniform(0.15, 0.6) * rng.random((cells, cells))
        mask = Image.fromarray((255 * fog).astype(np.uint8)).resize(image.size, Image.BICUBIC)
        haze = jitter(rng, (215, 215, 215), 35)
        image = Image.composite(Image.new("RGB", image.size, haze), image, mask)
    radius = w * rng.uniform(0.01, 0.02)
    if c.glow.getbbox() is not None:
        glow = c.glow.reduce(SUPERSAMPLE).filter(ImageFilter.GaussianBlur(radius))
        image = ImageChops.add(image, glow)
    return image


def apply_camera(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Focus blur, exposure, contrast, colour cast, vignetting, gamma and sensor noise."""
    if rng.random() < 0.12:
        image = image.filter(ImageFilter.GaussianBlur(image.width / 128 * rng.uniform(0.3, 0.9)))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = x * math.exp(rng.uniform(-0.3, 0.2)) * np.exp(rng.normal(0, 0.07, 3)).astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.8, 1.2) + mean
    if rng.random() < 0.4:
        axis = np.linspace(-0.5, 0.5, image.width, dtype=np.float32) ** 2
        x = x * (1 - rng.uniform(0.2, 0.7) * (axis[:, None] + axis[None, :]))[..., None]
    x = np.clip(x, 0, 1) ** rng.uniform(0.8, 1.25)
    x = x + rng.uniform(0, 0.02) * rng.standard_normal(x.shape, dtype=np.float32)
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


def new_canvas(width: int) -> Canvas:
    """An empty supersampled canvas with empty smoke and glow layers."""
    image = Image.new("RGB", (width, width))
    smoke = Image.new("L", (width, width))
    glow = Image.new("RGB", (width, width))
    return Canvas(
        image,
        ImageDraw.Draw(image, "RGBA"),
        smoke,
        ImageDraw.Draw(smoke),
        glow,
        ImageDraw.Draw(glow),
    )


def render_scene(rng: np.random.Generator, smoking: bool, size: int = 128) -> Image.Image:
    """Draws one scene of a person, smoking or not.

    Args:
        rng: the generator every random choice of this scene is drawn from.
        smoking: whether the person holds a cigarette; nothing else depends on it.
        size: width and height of the returned image in pixels.

    Returns:
        A square RGB image.
    """
    c = new_canvas(size * SUPERSAMPLE)
    paint_background(c, rng)
    person = paint_person(c, rng)
    plan = plan_objects(rng, smoking, person, c.width)
    paint_objects(c, rng, person, plan)
    paint_air(c, rng)
    return apply_camera(composite_light(c, rng), rng)


# ---------------------------------------------------------------- the data set on disk


def image_path(out_dir: Path, split: str, label: int, index: int) -> Path:
    """Where image `index` of a split and class is written."""
    name = CLASS_DIRS[label]
    return out_dir / split / name / f"{name}_{index:05d}.jpg"


def draw_and_save(task: tuple[str, int, int, int, int, int]) -> None:
    """Renders one image from its own seed and writes it as a JPEG of random quality."""
    out_dir, seed, split_id, label, index, size = task
    rng = np.random.default_rng([seed, split_id, label, index])
    image = render_scene(rng, smoking=bool(label), size=size)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    image.save(image_path(Path(out_dir), SPLITS[split_id], label, index), "JPEG", quality=quality)


def resolve_counts(counts: Mapping[str, int] | None) -> dict[str, int]:
    """Returns the images per class for every split, checking the keys and values."""
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    if set(counts) != set(SPLITS):
        raise ValueError(f"counts needs exactly the keys {list(SPLITS)}, got {sorted(counts)}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(
                f"the {split} count is {n!r}: use at least 1 image per class "
                f"(the default is {DEFAULT_COUNTS[split]})"
            )
    return {split: counts[split] for split in SPLITS}


def validate_arguments(seed: int, size: int, workers: int) -> None:
    """Raises ValueError, saying what a good value is, for a bad seed, size or worker count."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed is {seed!r}: use an integer >= 0, e.g. 0")
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size is {size!r}: use {MIN_SIZE} to {MAX_SIZE} pixels, e.g. 128")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers is {workers!r}: use 0 or 1 to draw in this process, or 2")


def read_record(out_dir: Path) -> dict | None:
    """The arguments a previous run recorded in out_dir, or None when there is no record."""
    try:
        record = json.loads((out_dir / RECORD_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def holds_exactly(out_dir: Path, record: dict) -> bool:
    """Whether out_dir is a finished output of these arguments with every image in place."""
    if read_record(out_dir) != {**record, "complete": True}:
        return False
    for split in SPLITS:
        for label, name in enumerate(CLASS_DIRS):
            expected = {
                image_path(out_dir, split, label, i).name for i in range(record["counts"][split])
            }
            if {p.name for p in (out_dir / split / name).glob("*.jpg")} != expected:
                return False
    return True


def check_writable(out_dir: Path, record: dict) -> None:
    """Refuses a non-empty out_dir unless a run with the same arguments made it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; choose a directory for --out")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    previous = read_record(out_dir)
    if previous is None:
        raise ValueError(
            f"{out_dir} is not empty and holds no {RECORD_NAME}: it is not a synthetic data "
            "set, so it is left alone. Choose an empty or new --out directory."
        )
    if {k: v for k, v in previous.items() if k != "complete"} != record:
        made_with = ", ".join(
            f"{k}={previous.get(k)}" for k in ("version", "seed", "size", "counts")
        )
        raise ValueError(
            f"{out_dir} holds a synthetic data set made with other arguments ({made_with}); "
            "delete it to replace it, or choose another --out directory."
        )


def write_record(out_dir: Path, record: dict, complete: bool) -> None:
    """Writes the arguments of this run, marked complete once every image is written."""
    text = json.dumps({**record, "complete": complete}, indent=2, sort_keys=True)
    (out_dir / RECORD_NAME).write_text(text + "\n")


def list_tasks(out_dir: Path, seed: int, counts: Mapping[str, int], size: int) -> Iterator[tuple]:
    """One task per image, as taken by `draw_and_save`."""
    for split_id, split in enumerate(SPLITS):
        for index in range(counts[split]):
            for label in (0, 1):
                yield (str(out_dir), seed, split_id, label, index, size)


def run_tasks(tasks: list[tuple], workers: int) -> None:
    """Draws and saves every task, in a pool of `workers` processes when that is above 1."""
    bar = tqdm(total=len(tasks), unit="img", desc="synthetic", disable=None)
    if workers <= 1:
        for task in tasks:
            draw_and_save(task)
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")  # safe even if the caller holds threads
        with context.Pool(workers) as pool:
            for _ in pool.imap_unordered(draw_and_save, tasks, chunksize=16):
                bar.update()
    bar.close()


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    size: int = 128,
    workers: int = 2,
) -> dict[str, int]:
    """Writes `out_dir/{train,val,test}/{smoking,notsmoking}/*.jpg` and `synthetic.json`.

    Args:
        out_dir: an empty or missing directory, or a previous output of the same arguments.
        seed: the data set seed; the same seed and arguments give byte-identical files.
        counts: images per class for each of "train", "val" and "test"; DEFAULT_COUNTS if None.
        size: width and height of the images in pixels, 32 to 512.
        workers: processes that draw; 0 or 1 draws in this process. Pools start processes
            with "spawn", so a calling script needs an `if __name__ == "__main__":` guard.

    Returns:
        The number of images per split (both classes), also when they were already there.

    Raises:
        ValueError: for a bad argument, or a non-empty out_dir this generator did not make
            with the same arguments.
    """
    resolved = resolve_counts(counts)
    validate_arguments(seed, size, workers)
    out = Path(out_dir)
    record = {
        "generator": "training.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "counts": resolved,
    }
    totals = {split: 2 * n for split, n in resolved.items()}
    if holds_exactly(out, record):
        logger.info("%s already holds this synthetic data set; nothing to draw", out)
        return totals
    check_writable(out, record)
    for split in SPLITS:
        for name in CLASS_DIRS:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    write_record(out, record, complete=False)
    tasks = list(list_tasks(out, seed, resolved, size))
    logger.info("drawing %d images of %d px into %s", len(tasks), size, out)
    run_tasks(tasks, workers)
    write_record(out, record, complete=True)
    return totals


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `python -m training.synthetic`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    for split in SPLITS:
        parser.add_argument(
            f"--{split}",
            type=int,
            default=DEFAULT_COUNTS[split],
            help=f"images per class in {split} (default {DEFAULT_COUNTS[split]})",
        )
    parser.add_argument("--workers", type=int, default=2, help="drawing processes (default 2)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parses the command line, writes the data set and prints one line saying what it wrote."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.perf_counter()
    try:
        totals = generate_dataset(
            args.out,
            seed=args.seed,
            size=args.size,
            workers=args.workers,
            counts={split: getattr(args, split) for split in SPLITS},
        )
    except ValueError as error:
        parser.error(str(error))
    per_split = ", ".join(f"{split} {n}" for split, n in totals.items())
    print(
        f"{args.out}: {sum(totals.values())} images of {args.size} px ({per_split}), "
        f"seed {args.seed}, in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
