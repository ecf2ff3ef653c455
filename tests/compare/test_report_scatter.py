"""The quality-against-cost plot: every point labelled, no two labels overlapping, every label inside the plot."""

import itertools
import xml.etree.ElementTree as ET

import pytest

from tunelab.comparison.report import _scatter_svg

SVG = "{http://www.w3.org/2000/svg}"
CHAR_WIDTH = 0.6  # of the font size: an average sans-serif glyph, estimated independently of the code under test


def label_boxes(svg: str) -> tuple[dict[str, tuple[float, float, float, float]], tuple, list[tuple[float, float]], str]:
    """name -> (x0, y0, x1, y1) of each point label, the plot's frame, the points, and all text."""
    root = ET.fromstring(svg)
    frame = root.find(f"{SVG}rect[@class='plot']")
    x, y = float(frame.get("x")), float(frame.get("y"))
    plot = (x, y, x + float(frame.get("width")), y + float(frame.get("height")))
    boxes = {}
    for text in root.iter(f"{SVG}text"):
        if text.get("class") == "label":
            size, left, baseline = float(text.get("font-size")), float(text.get("x")), float(text.get("y"))
            boxes[text.text] = (left, baseline - size, left + CHAR_WIDTH * size * len(text.text), baseline + 0.25 * size)
    points = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")]
    return boxes, plot, points, " ".join(t.text or "" for t in root.iter(f"{SVG}text"))


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def records(points):
    return [{"name": name, "usd": usd, "subject_fidelity": fidelity} for name, usd, fidelity in points]


COLLIDING = [  # the same cost and fidelity, near ones, and points at the plot's corners
    ("base", 0.0, 0.0),
    ("lora-r4", 0.0022, 0.61),
    ("lora-r16", 0.0022, 0.61),
    ("lora-r16-dropout", 0.0022, 0.61),
    ("dreambooth", 0.00221, 0.612),
    ("dreambooth-prior", 0.00219, 0.605),
    ("textual_inversion", 0.0021, 0.62),
    ("hypernetwork", 0.0030, 1.0),
    ("hypernetwork-long-name-here", 0.0030, 0.99),
    ("ti-zero", 0.0, 0.01),
]


@pytest.mark.parametrize("points", [COLLIDING, [(f"experiment-{i}", 0.001, 0.5) for i in range(16)]], ids=["near", "sixteen-at-one-spot"])
def test_labels_are_disjoint_inside_the_plot_and_clear_of_the_points(points):
    boxes, plot, markers, _ = label_boxes(_scatter_svg(records(points)))
    assert sorted(boxes) == sorted(name for name, _, _ in points)  # every point labelled in the plot
    for name, box in boxes.items():
        assert plot[0] <= box[0] and box[2] <= plot[2] and plot[1] <= box[1] and box[3] <= plot[3], name
        assert not any(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in markers), name
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not overlap(box_a, box_b), (a, b)


def test_a_label_sits_beside_its_point_when_there_is_room():
    points = [("base", 0.0, 0.1), ("lora", 0.002, 0.6), ("dreambooth", 0.003, 0.9)]
    boxes, _, markers, _ = label_boxes(_scatter_svg(records(points)))
    for (name, _, _), (x, y) in zip(points, markers):
        box = boxes[name]
        gap_x, gap_y = max(box[0] - x, 0, x - box[2]), max(box[1] - y, 0, y - box[3])
        assert gap_x <= 10 and gap_y <= 10, name


def test_more_labels_than_room_are_named_under_the_plot_never_on_top_of_each_other():
    points = [(f"a-rather-long-experiment-name-{i}", 0.001 * (i % 3), 0.5) for i in range(60)]
    boxes, _, _, text = label_boxes(_scatter_svg(records(points)))
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not overlap(box_a, box_b), (a, b)
    assert all(name in boxes or name in text.split("also: ", 1)[-1] for name, _, _ in points)
    assert len(boxes) < len(points)
