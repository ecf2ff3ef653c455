"""Labels for the points of a plot that overlap neither each other, nor the points, nor the plot's edge.

Greedy: each label takes the first free spot of its candidates, nearest first: beside its point, then
stacked above and below it, then anywhere in the plot (joined to its point by a leader line).
Text size is estimated (no font metrics in an SVG written by hand), generously.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAR_WIDTH = 0.62  # of the font size: wider than the average sans-serif glyph, so estimates err on the large side
ASCENT, DESCENT = 1.0, 0.3  # of the font size, above and below the baseline
MARKER = 5  # half-side of the box a point's marker occupies
GAP = 2  # between a label and anything else
SCAN_STEP = 2  # pixels between the bands of the plot tried for a label that fits nowhere near its point


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, area: "Box") -> bool:
        return area.x0 <= self.x0 and self.x1 <= area.x1 and area.y0 <= self.y0 and self.y1 <= area.y1

    def distance_to(self, x: float, y: float) -> float:
        dx = max(self.x0 - x, 0.0, x - self.x1)
        dy = max(self.y0 - y, 0.0, y - self.y1)
        return (dx * dx + dy * dy) ** 0.5

    def nearest_point(self, x: float, y: float) -> tuple[float, float]:
        return min(max(x, self.x0), self.x1), min(max(y, self.y0), self.y1)


@dataclass(frozen=True)
class Label:
    x: float  # where the text starts (text-anchor start)
    baseline: float
    box: Box
    leader: bool  # placed away from its point: draw a line to it


def text_size(text: str, font_size: float) -> tuple[float, float]:
    """(width, height) a line of text takes, estimated."""
    return CHAR_WIDTH * font_size * len(text), (ASCENT + DESCENT) * font_size


def _near(x: float, y: float, width: float, height: float, area: Box) -> list[tuple[float, float]]:
    """Top-left corners beside the point, then stacked above and below it, nearest first."""
    corners = [(x + MARKER + GAP, y - height / 2), (x - MARKER - GAP - width, y - height / 2),
               (x - width / 2, y - MARKER - GAP - height), (x - width / 2, y + MARKER + GAP)]
    for step in range(1, int((area.y1 - area.y0) / height) + 1):
        for sign in (-1, 1):
            offset = sign * step * (height + GAP)
            corners += [(x + MARKER + GAP, y - height / 2 + offset), (x - MARKER - GAP - width, y - height / 2 + offset)]
    return corners


def _free(box: Box, area: Box, occupied: list[Box]) -> bool:
    padded = Box(box.x0 - GAP / 2, box.y0 - GAP / 2, box.x1 + GAP / 2, box.y1 + GAP / 2)
    return box.inside(area) and not any(padded.overlaps(other) for other in occupied)


def _nearest_anywhere(x: float, y: float, width: float, height: float, area: Box, occupied: list[Box]) -> Box | None:
    """The free spot nearest the point, trying bands of the plot SCAN_STEP apart and the gaps along each."""
    best = None
    top = area.y0
    while top + height <= area.y1:
        band = Box(area.x0, top - GAP, area.x1, top + height + GAP)
        blockers = sorted((b for b in occupied if b.overlaps(band)), key=lambda b: b.x0)
        start = area.x0
        for gap_end, next_start in [(b.x0 - GAP, b.x1 + GAP) for b in blockers] + [(area.x1, area.x1)]:
            if gap_end - start >= width:
                left = min(max(x - width / 2, start), gap_end - width)
                box = Box(left, top, left + width, top + height)
                if _free(box, area, occupied) and (best is None or box.distance_to(x, y) < best.distance_to(x, y)):
                    best = box
            start = max(start, next_start)
        top += SCAN_STEP
    return best


def place_labels(points: list[tuple[float, float, str]], area: Box, font_size: float, taken: list[Box] = ()) -> list[Label | None]:
    """One label per (x, y, text) inside `area`, clear of `taken`, the markers and each other (None: no room left)."""
    occupied = list(taken) + [Box(x - MARKER, y - MARKER, x + MARKER, y + MARKER) for x, y, _ in points]
    labels: list[Label | None] = []
    for x, y, text in points:
        width, height = text_size(text, font_size)
        near = (Box(left, top, left + width, top + height) for left, top in _near(x, y, width, height, area))
        box = next((box for box in near if _free(box, area, occupied)), None) or _nearest_anywhere(x, y, width, height, area, occupied)
        if box is not None:
            occupied.append(box)
        labels.append(box and Label(box.x0, box.y0 + ASCENT * font_size, box, box.distance_to(x, y) > MARKER + 2 * GAP + 1))
    return labels
