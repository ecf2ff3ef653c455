"""Read a toyworld image back into words: background, object colours, shape, size, position.

The renderer is known, so reading is exact for real renders: every pixel maps to its
nearest palette colour, the background is the commonest colour on the border, the object
is what differs from it, and the shape is whichever template, redrawn into the object's
bounding box, overlaps it best. Generated images are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunelab.toyworld.world import PALETTE, SHAPES, Look, position_name, shape_mask, world_of_resolution

PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in PALETTE_NAMES], dtype=np.float32)  # (K, 3)
MIN_OBJECT_PIXELS_PER_1024 = 6  # fewer differing pixels than this per 32x32 is noise, not an object


def palette_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest palette colour."""
    pixels = image.astype(np.float32)[..., None, :]  # (H, W, 1, 3)
    return np.argmin(((pixels - _PALETTE_RGB) ** 2).sum(-1), axis=-1)  # (H, W)


@dataclass
class Reading:
    background: str
    mask: np.ndarray | None  # (H, W) bool, None when no object was found
    labels: np.ndarray  # (H, W) palette index per pixel
    pixels: np.ndarray  # (H, W, 3) float32 RGB 0-255
    shape: str | None = None
    colour: str | None = None  # the commonest object colour
    size: str | None = None
    position: str | None = None
    box: tuple[int, int, int, int] | None = None  # x0, y0, width, height

    @property
    def found(self) -> bool:
        return self.mask is not None


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def _template_in_box(template: np.ndarray, box, shape: tuple[int, int]) -> np.ndarray:
    """Stretch a square (S, S) template over a box of the image: (H, W), -1 outside the box."""
    x0, y0, width, height = box
    side = template.shape[0]
    placed = np.full(shape, -1, dtype=int)
    rows = (np.arange(height) * side // height)[:, None]
    cols = (np.arange(width) * side // width)[None, :]
    placed[y0 : y0 + height, x0 : x0 + width] = template[rows, cols]
    return placed


def shape_overlap(mask: np.ndarray, box, shape: str) -> float:
    """IoU of the object with a shape template redrawn into its box."""
    template = _template_in_box(shape_mask(shape, max(box[2], box[3])).astype(int), box, mask.shape) == 1
    union = (template | mask).sum()
    return float((template & mask).sum() / union) if union else 0.0


def read(image: np.ndarray) -> Reading:
    pixels = image.astype(np.float32)
    labels = palette_labels(image)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background_index = int(np.bincount(border, minlength=len(PALETTE_NAMES)).argmax())
    background = PALETTE_NAMES[background_index]
    mask = labels != background_index
    height, width = mask.shape
    if mask.sum() < MIN_OBJECT_PIXELS_PER_1024 * height * width / 1024:
        return Reading(background=background, mask=None, labels=labels, pixels=pixels)
    box = _box_of(mask)
    shape = max(SHAPES, key=lambda name: shape_overlap(mask, box, name))
    colour = PALETTE_NAMES[int(np.bincount(labels[mask], minlength=len(PALETTE_NAMES)).argmax())]
    size = world_of_resolution(width).size_word(max(box[2], box[3]) / 2)
    position = position_name((box[0] + box[2] / 2) / width, (box[1] + box[3] / 2) / height)
    return Reading(background, mask, labels, pixels, shape, colour, size, position, box)


def look_agreement(reading: Reading, look: Look) -> float:
    """How closely the object matches a look, shape and colours in place: 1.0 for a render of it.

    The look's template is redrawn into the object's box. Each template pixel is credited 1 when an
    object pixel there or at a 4-neighbour (blur and box error) reads as the colour the template asks
    for, else by how close the nearest one comes, falling linearly to 0 at COLOUR_TOLERANCE; that is recall.
    Precision credits each object pixel the same way against the template. The score is recall
    times precision, halved when the object reads as another shape (the tolerance forgives edges,
    not a square for a circle). Partial credit for near colours lets a technique that moves toward
    the subject's colours, without reaching them, score above one that does not.
    """
    if not reading.found:
        return 0.0
    box = reading.box
    template = _template_in_box(look.labels(max(box[2], box[3])), box, reading.mask.shape)  # (H, W) colour index or -1
    colours = np.array([PALETTE[name] for name in look.colours], dtype=np.float32)  # (K, 3)
    in_template = template >= 0
    expected = colours[np.maximum(template, 0)]  # (H, W, 3), meaningful inside the template
    height, width = template.shape
    quantized = _PALETTE_RGB[reading.labels]  # (H, W, 3) each pixel's nearest palette colour
    padded = {
        "pixels": np.pad(reading.pixels, ((1, 1), (1, 1), (0, 0))),
        "quantized": np.pad(quantized, ((1, 1), (1, 1), (0, 0))),
        "mask": np.pad(reading.mask, 1),
        "expected": np.pad(expected, ((1, 1), (1, 1), (0, 0))),
        "in_template": np.pad(in_template, 1),
    }
    recall = np.zeros((height, width), dtype=np.float32)
    precision = np.zeros((height, width), dtype=np.float32)
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        window = (slice(1 + dy, 1 + dy + height), slice(1 + dx, 1 + dx + width))
        near_pixels, near_quantized, near_mask = padded["pixels"][window], padded["quantized"][window], padded["mask"][window]
        recall = np.maximum(recall, np.where(in_template & near_mask, _similarity(near_pixels, near_quantized, expected), 0))
        near_expected, near_template = padded["expected"][window], padded["in_template"][window]
        precision = np.maximum(
            precision, np.where(reading.mask & near_template, _similarity(reading.pixels, quantized, near_expected), 0)
        )
    recall_score = recall[in_template].mean() if in_template.any() else 0.0
    precision_score = precision[reading.mask].mean()
    shape_factor = 1.0 if reading.shape == look.shape else 0.5
    return float(recall_score * precision_score * shape_factor)


CRISP_DISTANCE = 40.0  # RGB distance to the nearest palette colour within which a pixel counts as clean (the two closest are 83 apart)


def _near_object(reading: Reading) -> np.ndarray:
    """(H, W) bool: the object's box grown by one pixel (all False when no object was found)."""
    near = np.zeros(reading.labels.shape, dtype=bool)
    if reading.found:
        x0, y0, width, height = reading.box
        near[max(y0 - 1, 0) : y0 + height + 1, max(x0 - 1, 0) : x0 + width + 1] = True
    return near


def crispness(reading: Reading) -> float:
    """Fraction of the pixels around the object (its box grown by one pixel; the whole image when none is found)
    that are a clean palette colour, as every rendered pixel is; blurred edges and blended colours are not."""
    region = _near_object(reading) if reading.found else np.ones(reading.labels.shape, dtype=bool)
    nearest = np.sqrt(((reading.pixels[region][:, None, :] - _PALETTE_RGB) ** 2).sum(-1)).min(-1)  # (N,)
    return float((nearest <= CRISP_DISTANCE).mean())


def background_flatness(reading: Reading) -> float:
    """Fraction of the pixels away from the object (outside its box grown by one pixel) that read as the background."""
    away = ~_near_object(reading)
    if not away.any():
        return 0.0
    return float((reading.labels[away] == PALETTE_NAMES.index(reading.background)).mean())


COLOUR_TOLERANCE = 150.0  # RGB distance at which a colour earns nothing (red to orange is about 106)


def _similarity(pixels: np.ndarray, quantized: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(H, W, 3) pixels, their palette colours and the expected colours -> (H, W) in [0, 1]:
    1 where the pixel reads as the expected colour, else less the further it is from it."""
    near = np.clip(1.0 - np.linalg.norm(pixels - expected, axis=-1) / COLOUR_TOLERANCE, 0.0, 1.0)
    return np.where((quantized == expected).all(axis=-1), 1.0, near)
