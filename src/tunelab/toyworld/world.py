"""toyworld's scenes: one flat-coloured object on a plain background, and the captions that describe it.

Every shape is defined on the unit square and drawn into the object's bounding box,
so a reader that finds the box can redraw the exact template (see evaluate/scene_reading.py).
Pixels are hard-edged (no anti-aliasing): every pixel is one palette colour.

The world comes in generations (`World`): generation 1 is 32 px with objects placed anywhere;
generation 2 is 64 px with each object placed around the point its position word names, so
"on the left" always means plainly left; generation 3 is generation 2's world at 32 px; generation 4 is
generation 3's with half its objects two-coloured in a pattern, so the base knows how patterns and every
colour are drawn, and a subject (a pair of reserved colours, never shown together) is a new combination of
things it can draw, as a person's dog is to Stable Diffusion. A base model knows the generation it was
pretrained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import numpy as np

# Named colours (RGB 0-255). Solid objects are OBJECT_COLOURS on BACKGROUND_COLOURS; the rest are reserved
# for subjects: generations 1-3 never show them, generation 4 shows each beside an object colour in a pattern,
# never two of them together, so every subject's pair is new to the base.
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
RESERVED_COLOURS = tuple(name for name in PALETTE if name not in OBJECT_COLOURS + BACKGROUND_COLOURS)
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("left", "right", "top", "bottom", "center")
PATTERNS = ("solid", "rings", "quadrants", "bands")
# More two-colour patterns, for procedural subjects (tunelab hyper pretrain). Kept out of PATTERNS, which the
# autoencoder's pretraining draws from, so that recipe's data stays as it was.
LATER_PATTERNS = ("halves", "diagonal", "dot", "stripes")
TWO_COLOUR_PATTERNS = tuple(name for name in PATTERNS + LATER_PATTERNS if name != "solid")
ATTRIBUTES = ("shape", "colour", "background", "size", "position")  # what a caption asks for and a reading tells

HELD_OUT = (  # (shape, colour, background) never shown in pretraining; a base's scores are measured on them
    ("circle", "red", "gray"),
    ("square", "green", "black"),
    ("triangle", "blue", "white"),
    ("cross", "yellow", "gray"),
    ("circle", "white", "blue"),
    ("triangle", "yellow", "black"),
)

# Where "on the left" etc. puts an object's centre in an anchored world (fractions of the image).
ANCHORS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}


@dataclass(frozen=True)
class World:
    """One generation of toyworld: image size, object sizes, placement and caption grammar."""

    generation: int
    resolution: int  # image side in pixels
    sizes: dict[str, tuple[int, int]]  # size word -> half-extent range in pixels, inclusive
    placement: str  # uniform: anywhere that fits | anchored: around the position word's anchor
    jitter: float = 0.0  # anchored placement: the centre moves up to this fraction of the image from the anchor
    # Chance that a training caption keeps each optional part; a dropped colour teaches "a circle" = any colour.
    keep: dict[str, float] = field(default_factory=dict)
    patterned: float = 0.0  # chance that a pretraining scene's object is two-coloured in a pattern

    def size_word(self, half_extent: float) -> str:
        """The size word for an object of this half-extent: the nearer of the two ranges."""
        return "small" if half_extent <= (self.sizes["small"][1] + self.sizes["large"][0]) / 2 else "large"


GENERATION_1 = World(1, 32, {"small": (5, 7), "large": (9, 12)}, "uniform",
                     keep={"size": 0.5, "colour": 1.0, "position": 0.5, "background": 0.7})
GENERATION_2 = World(2, 64, {"small": (6, 8), "large": (11, 14)}, "anchored", jitter=0.06,
                     keep={"size": 0.6, "colour": 0.8, "position": 0.7, "background": 0.6})
# Generation 2's placement and captions at 32 px (8x8 latents, where a small UNet learns shapes fast); its
# size words split where generation 1's do (half-extent 8), so an image of either reads the same.
GENERATION_3 = World(3, 32, {"small": (4, 7), "large": (9, 10)}, "anchored", jitter=0.06,
                     keep={"size": 0.6, "colour": 0.8, "position": 0.7, "background": 0.6})
# Generation 3's scenes, half of them with a two-coloured object: a pair of object colours, or one object colour and
# one reserved colour, in any two-colour pattern. Captions name both colours ("a red orange circle"), not the pattern.
GENERATION_4 = replace(GENERATION_3, generation=4, patterned=0.5)
# Generation 4's scenes with shorter captions: generation 4's base drew the bare class prompt "a circle" as a circle
# in 31% of images (a full caption: 100%), having seen a caption with no optional part in 1% of its steps (5% here).
GENERATION_5 = replace(GENERATION_4, generation=5, keep={"size": 0.5, "colour": 0.6, "position": 0.5, "background": 0.5})
# Generation 6 is generation 5's world: its base keeps generation 5's denoiser and retrains the autoencoder's decoder.
GENERATION_6 = replace(GENERATION_5, generation=6)
WORLDS = {world.generation: world for world in (GENERATION_1, GENERATION_2, GENERATION_3, GENERATION_4, GENERATION_5, GENERATION_6)}
WORLD = GENERATION_6  # the generation the shipped base was pretrained on (tests/toyworld checks the two agree)


def world_of_resolution(resolution: int) -> World:
    """The generation whose images are this many pixels across: the shipped base's when it is that size (generations
    1 and 3 share one, and read alike), else the first."""
    for world in (WORLD, *WORLDS.values()):
        if world.resolution == resolution:
            return world
    raise ValueError(f"no toyworld generation draws {resolution} px images (known: {[w.resolution for w in WORLDS.values()]})")


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
    pattern: str = "solid"  # one of PATTERNS or LATER_PATTERNS

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
        elif self.pattern == "halves":  # left / right
            index = (u >= 0.5).astype(int)
        elif self.pattern == "diagonal":  # upper-left / lower-right triangles
            index = (u + v >= 1.0).astype(int)
        elif self.pattern == "dot":
            index = ((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25**2).astype(int)
        elif self.pattern == "stripes":  # three vertical stripes
            index = (np.floor(u * 3) % 2).astype(int)
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
    world: World

    @property
    def box(self) -> tuple[int, int, int]:
        """(x0, y0, side) of the object's bounding box."""
        x, y = self.centre
        return x - self.half_extent, y - self.half_extent, 2 * self.half_extent

    @property
    def position(self) -> str:
        return position_name(self.centre[0] / self.world.resolution, self.centre[1] / self.world.resolution)


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
    """(resolution, resolution, 3) uint8."""
    side = scene.world.resolution
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = PALETTE[scene.background]
    x0, y0, box_side = scene.box
    paint(scene.look, box_side, canvas, x0, y0)
    return canvas


def _centre(rng: random.Random, world: World, half: int, position: str | None) -> tuple[int, int]:
    margin = 1
    low, high = half + margin, world.resolution - half - margin
    if world.placement == "uniform":
        return rng.randint(low, high), rng.randint(low, high)
    anchor = ANCHORS[position or rng.choice(POSITIONS)]
    reach = round(world.jitter * world.resolution)
    x, y = (round(a * world.resolution) for a in anchor)
    return (min(max(rng.randint(x - reach, x + reach), low), high), min(max(rng.randint(y - reach, y + reach), low), high))


def place(rng: random.Random, look: Look, background: str, size: str | None = None, position: str | None = None,
          world: World = WORLD) -> Scene:
    """A scene with the object at a random size and place (drawn again until it matches `position`)."""
    size = size or rng.choice(tuple(world.sizes))
    low, high = world.sizes[size]
    while True:
        half = rng.randint(low, high)
        scene = Scene(look, background, size, half, _centre(rng, world, half, position), world)
        if position is None or scene.position == position:
            return scene


def random_scene(rng: random.Random, world: World = WORLD) -> Scene:
    if world.patterned and rng.random() < world.patterned:
        return place(rng, *_patterned_look(rng), world=world)
    colour = rng.choice(OBJECT_COLOURS)
    background = rng.choice([b for b in BACKGROUND_COLOURS if b != colour])
    return place(rng, Look(rng.choice(SHAPES), (colour,)), background, world=world)


def _patterned_look(rng: random.Random) -> tuple[Look, str]:
    """A two-coloured look with at most one reserved colour (two together are what subjects are), and a background."""
    while True:
        colours = tuple(rng.sample(OBJECT_COLOURS + RESERVED_COLOURS, 2))
        if sum(colour in RESERVED_COLOURS for colour in colours) <= 1:
            break
    background = rng.choice([b for b in BACKGROUND_COLOURS if b not in colours])
    return Look(rng.choice(SHAPES), colours, rng.choice(TWO_COLOUR_PATTERNS)), background


def position_phrase(where: str) -> str:
    """How captions say a position: "in the center", "on the left"."""
    return "in the center" if where == "center" else f"on the {where}"


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A caption from the grammar; with rng, optional parts (size, colour, position, background) are dropped at random."""
    chances = scene.world.keep
    keep = (lambda part: rng.random() < chances[part]) if rng else (lambda part: True)
    words = ["a"]
    if keep("size"):
        words.append(scene.size)
    if chances["colour"] >= 1.0 or keep("colour"):  # generation 1 always names the colour (and draws no number for it)
        words.append(" ".join(scene.look.colours))
    words.append(scene.look.shape)
    if keep("position"):
        words.append(position_phrase(scene.position))
    if keep("background"):
        words.append(f"on a {scene.background} background")
    return " ".join(words)
