"""Read a toyworld image back into words: background, object colours, shape, size, position.

The renderer is known, so reading is exact for real renders: every pixel maps to its
nearest palette colour, the background is the commonest colour on the border, the object
is what differs from it, and the shape is whichever template, redrawn into the object's
bounding box, overlaps it best. Generated images are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunelab.toyworld.world import PALETTE, SHAPES, SIZES, Look, position_name, shape_mask

PALETTE_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[name] for name in PALETTE_NAMES], dtype=np.float32)  # (K, 3)
MIN_OBJECT_PIXELS = 6


def palette_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index of the nearest palette colour."""
    pixels = image.astype(np.float32)[..., None, :]  # (H, W, 1, 3)
    return np.argmin(((pixels - _PALETTE_RGB) ** 2).sum(-1), axis=-1)  # (H, W)


@dataclass
class Reading:
    background: str
    mask: np.ndarray | None  # (H, W) bool, None when no object was found
    labels: np.ndarray  # (H, W) palette index per pixel
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
    labels = palette_labels(image)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background_index = int(np.bincount(border, minlength=len(PALETTE_NAMES)).argmax())
    background = PALETTE_NAMES[background_index]
    mask = labels != background_index
    if mask.sum() < MIN_OBJECT_PIXELS:
        return Reading(background=background, mask=None, labels=labels)
    box = _box_of(mask)
    shape = max(SHAPES, key=lambda name: shape_overlap(mask, box, name))
    colour = PALETTE_NAMES[int(np.bincount(labels[mask], minlength=len(PALETTE_NAMES)).argmax())]
    half_extent = max(box[2], box[3]) / 2
    size = "small" if half_extent <= (SIZES["small"][1] + SIZES["large"][0]) / 2 else "large"
    height, width = mask.shape
    position = position_name((box[0] + box[2] / 2) / width, (box[1] + box[3] / 2) / height)
    return Reading(background, mask, labels, shape, colour, size, position, box)


def look_agreement(reading: Reading, look: Look) -> float:
    """How closely the object matches a look, shape and colours in place: 1.0 for a render of it.

    The look's template is redrawn into the object's box; a pixel agrees when its colour is the
    template's colour there, or at a neighbour (one-pixel tolerance for blur and box error).
    The score is recall (template pixels matched) times precision (object pixels matched), halved when
    the object reads as another shape (the tolerance forgives edges, not a square for a circle).
    """
    if not reading.found:
        return 0.0
    box = reading.box
    template = _template_in_box(look.labels(max(box[2], box[3])), box, reading.mask.shape)  # (H, W) colour index or -1
    look_palette = np.array([PALETTE_NAMES.index(name) for name in look.colours])
    expected = np.where(template >= 0, look_palette[np.maximum(template, 0)], -1)  # (H, W) palette index or -1
    got = np.where(reading.mask, reading.labels, -1)
    near = np.zeros_like(got, dtype=bool)  # expected colour at the pixel or a 4-neighbour of it
    matched_object = np.zeros_like(got, dtype=bool)
    padded_expected = np.pad(expected, 1, constant_values=-2)
    padded_got = np.pad(got, 1, constant_values=-3)
    height, width = got.shape
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        shifted_got = padded_got[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        shifted_expected = padded_expected[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        near |= (expected >= 0) & (shifted_got == expected)
        matched_object |= (got >= 0) & (shifted_expected == got)
    recall = near.sum() / max((expected >= 0).sum(), 1)
    precision = matched_object.sum() / max((got >= 0).sum(), 1)
    shape_factor = 1.0 if reading.shape == look.shape else 0.5
    return float(recall * precision * shape_factor)
