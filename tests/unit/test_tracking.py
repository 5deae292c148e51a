"""The per-camera tracker: one id per object whatever the class flicker, two objects two ids, a weak
detection keeps its track, lost after max_age, greedy matching and IoU tables."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.boxes import greedy_match, iou_matrix
from edgedet.tracking import Tracker, TrackerSettings
from edgedet.types import Detection


def det(label: str, score: float, x: float, y: float = 100.0, w: float = 50.0, h: float = 100.0) -> Detection:
    return Detection(label, 0 if label == "Normal" else 1, score, (x, y, x + w, y + h))


def test_one_person_whose_class_flickers_is_one_track_with_a_voted_label() -> None:
    tracker = Tracker("cam", clock=lambda: 1700000000.0)
    ids = []
    for i in range(20):
        label = "Fall" if i % 3 == 0 else "Normal"
        frame = tracker.update([det(label, 0.8, 100 + 3 * i)], now=float(i))
        ids.extend(frame.track_ids())
    assert set(ids) == {"cam-1700000000-1"}
    (track,) = tracker.tracks
    assert track.label == "Normal"  # 13 of 20 frames, same scores
    assert dict(track.counts) == {"Fall": 7, "Normal": 13}


def test_two_objects_of_one_label_are_two_tracks() -> None:
    tracker = Tracker("cam")
    for i in range(5):
        frame = tracker.update([det("Normal", 0.9, 100 + i), det("Normal", 0.9, 400 - i)], now=float(i))
    assert len(set(frame.track_ids())) == 2
    assert len(tracker.tracks) == 2


def test_a_briefly_weak_detection_keeps_its_track_but_never_starts_one() -> None:
    tracker = Tracker("cam", TrackerSettings(high=0.5, low=0.1))
    first = tracker.update([det("Normal", 0.9, 100)], now=0.0).track_ids()
    weak = tracker.update([det("Normal", 0.2, 104)], now=1.0).track_ids()
    assert weak == first
    assert tracker.update([det("Normal", 0.2, 600)], now=2.0).track_ids() == [None]  # far away: no new track
    assert tracker.update([det("Normal", 0.05, 108)], now=3.0).track_ids() == [None]  # below low


def test_the_motion_model_follows_a_box_that_speeds_up() -> None:
    """A 50 px wide box speeding up to 60 px per frame: frame to frame it soon overlaps its last box
    by less than match_iou (IoU 0 at the end), but the predicted box still matches: one id."""
    tracker = Tracker("cam", TrackerSettings(match_iou=0.3))
    xs = np.cumsum([5.0 * i for i in range(13)])  # steps 0, 5, 10, ... 60 px
    ids = {tid for i, x in enumerate(xs) for tid in tracker.update([det("Normal", 0.9, x)], now=float(i)).track_ids()}
    assert len(ids) == 1
    assert xs[-1] - xs[-2] > 50  # the last step is wider than the box: plain IoU matching would lose it


def test_tracks_are_lost_after_max_age_frames_or_seconds() -> None:
    tracker = Tracker("cam", TrackerSettings(max_age_frames=3, max_age_s=100.0))
    tracker.update([det("Normal", 0.9, 100)], now=0.0)
    assert not tracker.update([], now=1.0).lost
    assert not tracker.update([], now=2.0).lost
    assert [t.hits for t in tracker.update([], now=3.0).lost] == [1]
    tracker.update([det("Normal", 0.9, 100)], now=4.0)
    assert tracker.update([det("Normal", 0.9, 100)], now=5.0).lost == ()
    timed = Tracker("cam", TrackerSettings(max_age_frames=1000, max_age_s=5.0))
    timed.update([det("Normal", 0.9, 100)], now=0.0)
    assert timed.expire(now=4.9) == []
    assert len(timed.expire(now=5.0)) == 1 and timed.tracks == []


def test_label_groups_keep_unrelated_labels_apart() -> None:
    tracker = Tracker("cam", TrackerSettings(groups=(("smoke", "fire"), ("person",))))
    a = tracker.update([det("smoke", 0.9, 100)], now=0.0).track_ids()
    b = tracker.update([det("fire", 0.9, 102)], now=1.0).track_ids()
    c = tracker.update([det("person", 0.9, 104)], now=2.0).track_ids()
    assert a == b and c != a


def test_track_ids_differ_across_restarts() -> None:
    one = Tracker("gate", clock=lambda: 1000.0).update([det("Normal", 0.9, 1)], now=0).track_ids()
    two = Tracker("gate", clock=lambda: 2000.0).update([det("Normal", 0.9, 1)], now=0).track_ids()
    assert one == ["gate-1000-1"] and two == ["gate-2000-1"]


@pytest.mark.parametrize(
    ("iou", "expected"),
    [
        (np.array([[0.9, 0.8], [0.85, 0.1]]), [(0, 0)]),  # row 1 wants col 0 too, col 1 is below threshold
        (np.array([[0.9, 0.8], [0.85, 0.5]]), [(0, 0), (1, 1)]),
        (np.zeros((0, 3)), []),
        (np.array([[0.2]]), []),
    ],
)
def test_greedy_match(iou: np.ndarray, expected: list[tuple[int, int]]) -> None:
    assert greedy_match(iou, 0.3) == expected


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10]], dtype=float)
    assert iou_matrix(a, b) == pytest.approx(np.array([[1 / 3, 1.0], [0.0, 0.0]]))


@pytest.mark.parametrize("kwargs", [{"low": 0.6, "high": 0.5}, {"match_iou": 0}, {"max_age_frames": 0}])
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrackerSettings(**kwargs)  # type: ignore[arg-type]
