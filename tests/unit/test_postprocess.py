"""Decode / NMS / rescale tables on synthetic head outputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.postprocess import decode, scale_boxes
from edgedet.preprocess import letterbox_geometry

NAMES = ("person", "car")
SQUARE = letterbox_geometry(640, 640, 640, 640)  # identity mapping


def head(*boxes: tuple[float, float, float, float, int, float], anchors: int = 16) -> np.ndarray:
    """Build a (1, 4 + nc, anchors) output from (cx, cy, w, h, class, score) rows."""
    out = np.zeros((1, 4 + len(NAMES), anchors), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


def test_decode_converts_cxcywh_and_sorts_by_score():
    dets = decode(head((100, 100, 20, 40, 0, 0.6), (300, 300, 10, 10, 1, 0.9)), SQUARE, NAMES)
    assert [d.label for d in dets] == ["car", "person"]
    assert dets[1].xyxy == pytest.approx((90, 80, 110, 120))
    assert dets[0].score == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("rows", "kwargs", "expected_count"),
    [
        ([(100, 100, 50, 50, 0, 0.25)], {}, 0),  # score must be strictly above conf
        ([(100, 100, 50, 50, 0, 0.2501)], {}, 1),
        ([(100, 100, 50, 50, 0, 0.9), (102, 100, 50, 50, 0, 0.8)], {}, 1),  # same class, IoU 0.92 > 0.7
        ([(100, 100, 50, 50, 0, 0.9), (102, 100, 50, 50, 1, 0.8)], {}, 2),  # other class: class-aware NMS
        ([(100, 100, 50, 50, 0, 0.9), (115, 100, 50, 50, 0, 0.8)], {}, 2),  # IoU 0.54 < 0.7
        ([(100, 100, 50, 50, 0, 0.9), (115, 100, 50, 50, 0, 0.8)], {"iou": 0.5}, 1),
        ([(100, 100, 50, 50, 0, 0.9), (300, 300, 50, 50, 1, 0.8)], {"classes": [1]}, 1),
        ([(100 + 60 * i, 100, 50, 50, 0, 0.5 + i / 100) for i in range(8)], {"max_det": 3}, 3),
        ([], {}, 0),
    ],
)
def test_decode_table(rows, kwargs, expected_count):
    assert len(decode(head(*rows), SQUARE, NAMES, **kwargs)) == expected_count


def test_max_det_keeps_best():
    rows = [(100 + 60 * i, 100, 50, 50, 0, 0.5 + i / 100) for i in range(8)]
    dets = decode(head(*rows), SQUARE, NAMES, max_det=2)
    assert [round(d.score, 2) for d in dets] == [0.57, 0.56]


def test_rescale_removes_padding_and_clips():
    geo = letterbox_geometry(720, 1280, 640, 640)  # gain 0.5, top pad 140
    boxes = np.array([[0, 140, 640, 500], [-10, 100, 700, 600]], np.float32)
    out = scale_boxes(boxes, geo)
    assert out[0].tolist() == pytest.approx([0, 0, 1280, 720])
    assert out[1].tolist() == pytest.approx([0, 0, 1280, 720])  # clipped to the image


def test_rescale_thin_image_uses_per_axis_gain():
    geo = letterbox_geometry(1, 4000, 640, 640)  # new 640 x 1, gain_x 0.16, gain_y 1
    out = scale_boxes(np.array([[64, 319, 128, 320]], np.float32), geo)
    assert out[0].tolist() == pytest.approx([400, 0, 800, 1])


def test_class_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 classes but 3 names"):
        decode(head((1, 1, 1, 1, 0, 0.9)), SQUARE, ("a", "b", "c"))


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(["car"], [1]), ([0, "car"], [0, 1]), (["1"], [1]), (["person", "person"], [0, 0])],
)
def test_class_ids(requested, expected):
    from edgedet.postprocess import class_ids

    assert class_ids(requested, NAMES) == expected


@pytest.mark.parametrize(
    ("requested", "message"),
    [(["smoke"], "unknown label 'smoke' (model labels: person, car)"), ([2], "class id 2 out of range")],
)
def test_class_ids_errors(requested, message):
    from edgedet.postprocess import class_ids

    with pytest.raises(ValueError, match=None) as info:
        class_ids(requested, NAMES)
    assert message in str(info.value)
