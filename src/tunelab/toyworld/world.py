"""toyworld's scenes: one flat-coloured object on a plain background, and the captions that describe it.

Every shape is defined on the unit square and drawn into the object's bounding box,
so a reader that finds the box can redraw the exact template (see evaluate/scene_reading.py).
Pixels are hard-edged (no anti-aliasing): every pixel is one palette colour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

RESOLUTION = 32

# Named colours (RGB 0-255). The base model sees OBJECT_COLOURS and BACKGROUND_COLOURS only;
# the rest are reserved for subjects, so a subject's colours are new to the base.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "orange": (250, 140, 20),
    "purple": (140, 50, 180),
    "pink": (250, 130, 200),
}
OBJECT_COLOURS = ("red", "green", "blue", "yellow", "white")
BACKGROUND_COLOURS = ("black", "gray", "white", "blue")
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (5, 7), "large": (9, 12)}  # half-extent in pixels, inclusive range
POSITIONS = ("left", "right", "top", "bottom", "center")


def _unit_grid(box_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of a box_size x box_size box in unit coordinates: (u, v) each (S, S)."""
    centres = (np.arange(box_size) + 0.5) / box_size
    return np.meshgrid(centres, centres)  # u runs along x, v along y


def shape_mask(shape: str, box_size: int) -> np.ndarray:
    """(S, S) bool: the shape drawn to fill a box."""
    u, v = _unit_grid(box_size)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.ones_like(u, dtype=bool)
    if shape == "triangle":  # apex up; the half-pixel keeps the apex row non-empty so the box stays the box
        return np.abs(u - 0.5) <= v / 2 + 0.5 / box_size
    if shape == "cross":
        return (np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class Look:
    """How an object is coloured: a solid colour or a pattern of two colours over its shape."""

    shape: str
    colours: tuple[str, ...]  # one colour = solid
    pattern: str = "solid"  # solid | rings | quadrants | bands

    def labels(self, box_size: int) -> np.ndarray:
        """(S, S) int: index into `colours` per pixel, -1 outside the shape."""
        u, v = _unit_grid(box_size)
        if self.pattern == "solid":
            index = np.zeros_like(u, dtype=int)
        elif self.pattern == "rings":
            distance = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2)
            index = ((distance > 0.17) & (distance <= 0.34)).astype(int)
        elif self.pattern == "quadrants":
            index = ((u < 0.5) ^ (v < 0.5)).astype(int)
        elif self.pattern == "bands":
            index = (v >= 0.55).astype(int)
        else:
            raise ValueError(f"unknown pattern {self.pattern!r}")
        return np.where(shape_mask(self.shape, box_size), index, -1)


@dataclass(frozen=True)
class Scene:
    look: Look
    background: str
    size: str  # small | large
    half_extent: int
    centre: tuple[int, int]  # (x, y) of the box's top-left + half_extent

    @property
    def box(self) -> tuple[int, int, int]:
        """(x0, y0, side) of the object's bounding box."""
        x, y = self.centre
        return x - self.half_extent, y - self.half_extent, 2 * self.half_extent

    @property
    def position(self) -> str:
        return position_name(self.centre[0] / RESOLUTION, self.centre[1] / RESOLUTION)


def position_name(x: float, y: float) -> str:
    """Where a point (as a fraction of the image) lies: the axis further from the centre wins."""
    dx, dy = x - 0.5, y - 0.5
    if max(abs(dx), abs(dy)) < 0.15:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def paint(look: Look, box_size: int, canvas: np.ndarray, x0: int, y0: int) -> None:
    """Draw a look into canvas (H, W, 3) uint8 with its box's top-left at (x0, y0)."""
    labels = look.labels(box_size)
    colours = np.array([PALETTE[name] for name in look.colours], dtype=np.uint8)
    region = canvas[y0 : y0 + box_size, x0 : x0 + box_size]
    inside = labels >= 0
    region[inside] = colours[labels[inside]]


def render(scene: Scene) -> np.ndarray:
    """(RESOLUTION, RESOLUTION, 3) uint8."""
    canvas = np.empty((RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    canvas[:] = PALETTE[scene.background]
    x0, y0, side = scene.box
    paint(scene.look, side, canvas, x0, y0)
    return canvas


def place(rng: random.Random, look: Look, background: str, size: str | None = None, position: str | None = None) -> Scene:
    """A scene with the object at a random size and place (drawn again until it matches `position`)."""
    size = size or rng.choice(tuple(SIZES))
    low, high = SIZES[size]
    while True:
        half = rng.randint(low, high)
        margin = 1
        centre = (rng.randint(half + margin, RESOLUTION - half - margin), rng.randint(half + margin, RESOLUTION - half - margin))
        scene = Scene(look=look, background=background, size=size, half_extent=half, centre=centre)
        if position is None or scene.position == position:
            return scene


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(OBJECT_COLOURS)
    background = rng.choice([b for b in BACKGROUND_COLOURS if b != colour])
    return place(rng, Look(rng.choice(SHAPES), (colour,)), background)


def position_phrase(where: str) -> str:
    """How captions say a position: "in the center", "on the left"."""
    return "in the center" if where == "center" else f"on the {where}"


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A caption from the grammar; with rng, optional parts (size, position, background) are dropped at random."""
    keep = (lambda probability: rng.random() < probability) if rng else (lambda probability: True)
    words = ["a"]
    if keep(0.5):
        words.append(scene.size)
    words.append(" ".join(scene.look.colours))
    words.append(scene.look.shape)
    if keep(0.5):
        words.append(position_phrase(scene.position))
    if keep(0.7):
        words.append(f"on a {scene.background} background")
    return " ".join(words)
