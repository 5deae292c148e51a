"""Tests for edgedet.events: K-of-N start, updates, end, zones/masks, ids, snapshots, payload."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import EventThresholds, Polygon, parse_config
from edgedet.events.messages import EventMessage, active_payload
from edgedet.events.snapshots import SnapshotStore
from edgedet.events.stage import EventStage
from edgedet.events.tracker import EventRules, EventTracker
from edgedet.events.zones import Zone, box_iou, zones_from_config
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.schemas import load_schema
from edgedet.types import Detection, Detections

W, H = 64, 48
T0 = 1_700_000_000.0
BOX = (10.0, 10.0, 30.0, 40.0)  # centre (20, 25), bottom-centre (20, 40); area 600 = 0.195 of the frame


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def det(label: str = "smoke", score: float = 0.9, box: tuple[float, float, float, float] = BOX) -> Detection:
    return Detection(label, 0 if label == "smoke" else 1, score, box)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rules(**kwargs: float) -> EventRules:
    base = {"confirm_frames": 3, "window_frames": 5, "min_score": 0.5, "min_area": 0.0, "clear_after_s": 10.0,
            "update_interval_s": 5.0}
    return EventRules(EventThresholds(**{**base, **kwargs}))  # type: ignore[arg-type]


class Feed:
    """A tracker driven by synthetic frames, one per ``dt`` seconds of the injected clock."""

    def __init__(self, event_rules: EventRules | None = None, *, zones: Iterable[Zone] = (),
                 masks: Iterable[Zone] = (), snapshots: SnapshotStore | None = None, dt: float = 1.0) -> None:
        self.clock = Clock()
        self.dt = dt
        self.seq = 0
        self.ids = iter(f"ev{n}" for n in range(1, 100))
        self.tracker = EventTracker("ridge", event_rules or rules(), zones, masks, self.clock,
                                    lambda start, cam, label: next(self.ids), snapshots=snapshots)

    def frame(self, *items: Detection, image: np.ndarray | None = None) -> list[EventMessage]:
        """Feed one frame at the current clock time, then advance the clock by ``dt``."""
        dets = Detections("ridge", self.seq, 0, T0 + self.clock.t, W, H, "m", tuple(items))
        out = self.tracker.update(dets, image)
        self.seq += 1
        self.clock.t += self.dt
        return out

    def pattern(self, pattern: str, score: float = 0.9,
                box: tuple[float, float, float, float] = BOX) -> list[list[EventMessage]]:
        """'x' = a frame with a smoke detection, '.' = an empty frame."""
        return [self.frame(det(score=score, box=box)) if c == "x" else self.frame() for c in pattern]


def types(per_frame: list[list[EventMessage]]) -> list[str]:
    return [",".join(m.type for m in msgs) for msgs in per_frame]


# --------------------------------------------------------------------------- K of N


@pytest.mark.parametrize(
    ("pattern", "confirm", "window", "start_at"),
    [
        ("xxxxxxxx", 3, 5, 2),        # sustained: starts at the 3rd qualifying frame
        ("x.x.x...", 3, 5, 4),        # flicker every other frame: 3 of 5 -> starts
        ("x..x..x..x..", 3, 5, None),  # every third frame: never 3 in any 5
        ("x.......", 3, 5, None),     # single-frame glare
        ("x...x...x...", 2, 4, None),  # every fourth frame: never 2 in any 4
        ("x..xx...", 3, 5, 4),        # 3 hits inside one window of 5
        ("x...xx..", 3, 5, None),     # the first hit slid out just before the third
        ("xx.x....", 3, 3, None),     # 3 of 3 needs three in a row
        ("xx.x....", 3, 4, 3),
        ("x.......", 1, 1, 0),
    ],
)
def test_k_of_n_start(pattern: str, confirm: int, window: int, start_at: int | None) -> None:
    feed = Feed(rules(confirm_frames=confirm, window_frames=window))
    got = types(feed.pattern(pattern))
    expected = ["new" if i == start_at else "" for i in range(len(pattern))]
    assert got == expected


def test_sustained_smoke_starts_once_updates_rate_limited_and_ends_after_clear() -> None:
    feed = Feed(rules(update_interval_s=5.0, clear_after_s=10.0))
    scores = [0.5, 0.5, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.95]
    per_frame = [feed.frame(det(score=s)) for s in scores]  # one frame a second, t = 0..12
    msgs = [m for frame in per_frame for m in frame]
    # new at the 3rd frame (t=2); the score rises every frame, but updates come at most every 5 s
    assert [(m.type, m.top_score) for m in msgs] == [("new", 0.5), ("update", 0.75), ("update", 0.95)]
    assert [i for i, t in enumerate(types(per_frame)) if t] == [2, 7, 12]
    assert feed.tracker.tick(now=12.0 + 9.999) == []
    (end,) = feed.tracker.tick(now=22.0)  # last qualifying frame at t=12
    assert (end.type, end.end_time, end.frames_seen, end.top_score) == ("end", iso(T0 + 12), 13, 0.95)
    assert end.start_time == iso(T0 + 0)  # the first frame of the confirming window
    assert feed.tracker.tick(now=100.0) == [] and feed.tracker.active() == {}


@pytest.mark.parametrize(
    ("pattern", "top"),
    [
        ("G.x.x", 0.99),    # the glare frame is part of the confirming window
        ("G..x.x.x", 0.6),  # it slid out before the third hit: it is not the event's best
    ],
)
def test_top_score_counts_only_hits_in_the_confirming_window(pattern: str, top: float) -> None:
    feed = Feed()
    msgs = [m for c in pattern
            for m in (feed.frame(det(score=0.99 if c == "G" else 0.6)) if c != "." else feed.frame())]
    assert [(m.type, m.top_score, m.score) for m in msgs] == [("new", top, 0.6)]


def test_update_without_material_change_is_not_sent() -> None:
    feed = Feed(rules(update_interval_s=0.0))
    boxes = [BOX, BOX, BOX, (11.0, 10.0, 31.0, 40.0), (40.0, 5.0, 60.0, 35.0), (40.0, 5.0, 60.0, 35.0)]
    scores = [0.8, 0.8, 0.8, 0.84, 0.84, 0.89]
    got = [feed.frame(det(score=s, box=b)) for s, b in zip(scores, boxes, strict=True)]
    # +0.04 and a small move: nothing; a jump (IoU 0): update; +0.05 over the published 0.84: update
    assert types(got) == ["", "", "new", "", "update", "update"]
    assert got[4][0].box == (40.0, 5.0, 60.0, 35.0)


def test_gap_shorter_than_clear_is_one_event_longer_is_two() -> None:
    short = Feed(rules(clear_after_s=10.0, update_interval_s=1000.0))
    msgs = [m for f in short.pattern("xxx" + "." * 8 + "xxx") for m in f]  # last hit t=2, next t=11
    assert [m.type for m in msgs] == ["new"]
    assert [m.type for m in short.tracker.close()] == ["end"]

    long = Feed(rules(clear_after_s=10.0, update_interval_s=1000.0))
    per_frame = long.pattern("xxx" + "." * 10 + "xxx")  # at t=12 ten seconds passed since t=2
    msgs = [m for f in per_frame for m in f]
    assert [m.type for m in msgs] == ["new", "end", "new"]
    assert types(per_frame)[12] == "end" and types(per_frame)[15] == "new"
    assert msgs[0].id == msgs[1].id != msgs[2].id


def test_frames_stopping_end_the_event_through_tick() -> None:
    feed = Feed()
    feed.pattern("xxxx")  # last qualifying frame at t=3
    assert set(feed.tracker.active()) == {"smoke"}
    assert feed.tracker.tick(now=12.5) == []
    (end,) = feed.tracker.tick(now=13.0)
    assert (end.type, end.end_time) == ("end", iso(T0 + 3))


def test_old_hits_do_not_count_after_the_stream_paused() -> None:
    feed = Feed()
    feed.pattern("xx")
    feed.clock.t += 60  # camera down for a minute
    assert types(feed.pattern("x.")) == ["", ""]
    assert types(feed.pattern("x")) == [""]  # 2 of 3 since the pause
    assert types(feed.pattern("x")) == ["new"]


def test_close_ends_every_event_and_active_reports_them() -> None:
    feed = Feed(EventRules(EventThresholds(), {"person": EventThresholds(confirm_frames=1, window_frames=1)}))
    for _ in range(3):
        feed.frame(det("smoke"), det("person", 0.7))
    active = feed.tracker.active()
    assert sorted(active) == ["person", "smoke"]
    assert all(active_payload(m) == "ON" for m in active.values())
    ends = feed.tracker.close()
    assert sorted((m.label, m.type, active_payload(m)) for m in ends) == [
        ("person", "end", "OFF"), ("smoke", "end", "OFF")]
    assert feed.tracker.active() == {} and feed.tracker.tick(now=1e9) == []


def test_duplicate_frames_are_ignored_and_wrong_camera_is_an_error() -> None:
    feed = Feed()
    feed.pattern("xx")
    again = Detections("ridge", 0, 0, T0, W, H, "m", (det(),))
    assert feed.tracker.update(again, None) == []
    assert types(feed.pattern("x")) == ["new"]  # the duplicate was not counted


def test_a_frame_finishing_after_a_later_one_still_counts() -> None:
    """Two workers: frame 3 may be published before frame 2; both count towards K of N."""
    feed = Feed()
    feed.pattern("x")  # seq 0
    assert feed.tracker.update(Detections("ridge", 2, 0, T0 + 1, W, H, "m", (det(),)), None) == []
    messages = feed.tracker.update(Detections("ridge", 1, 0, T0 + 2, W, H, "m", (det(),)), None)
    assert [m.type for m in messages] == ["new"]  # 3 qualifying frames of 3
    with pytest.raises(ValueError, match="camera 'ridge' got detections of 'gate'"):
        feed.tracker.update(Detections("gate", 99, 0, T0, W, H, "m", ()), None)


# --------------------------------------------------------------------------- filters


def test_per_label_thresholds_smoke_stricter_than_person() -> None:
    feed = Feed(EventRules.from_config(parse_config(
        "cameras: {c: {url: 0}}\nmodel: {path: m}\n"
        "events: {labels: {smoke: {min_score: 0.6, confirm_frames: 4}}}\n", check_files=False).events))
    got = [feed.frame(det("smoke", 0.55), det("person", 0.55)) for _ in range(5)]
    assert [[m.label for m in f] for f in got] == [[], [], ["person"], [], []]
    got = [feed.frame(det("smoke", 0.65)) for _ in range(4)]
    assert [[m.label for m in f] for f in got] == [[], [], [], ["smoke"]]


@pytest.mark.parametrize(
    ("box", "min_area", "starts"),
    [
        ((0.0, 0.0, 32.0, 24.0), 0.25, True),   # exactly a quarter of the frame
        ((0.0, 0.0, 32.0, 23.0), 0.25, False),
        ((0.0, 0.0, 64.0, 48.0), 1.0, True),
        ((5.0, 5.0, 5.0, 20.0), 0.0, True),     # an empty box passes min_area 0
    ],
)
def test_min_area(box: tuple[float, float, float, float], min_area: float, starts: bool) -> None:
    feed = Feed(rules(min_area=min_area))
    assert ("new" in types(feed.pattern("xxx", box=box))) is starts


def test_min_score_is_inclusive() -> None:
    assert "new" in types(Feed(rules(min_score=0.5)).pattern("xxx", score=0.5))
    assert "new" not in types(Feed(rules(min_score=0.5)).pattern("xxxxx", score=0.4999))


NORM = Zone("valley", ((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)))  # bottom half, normalised
PIXELS = Zone("gate", ((0.0, 0.0), (32.0, 0.0), (32.0, 48.0), (0.0, 48.0)), pixels=True)  # left half


@pytest.mark.parametrize(
    ("zones", "box", "expected"),
    [
        ([NORM], BOX, ["valley"]),                          # centre (20, 25) above, bottom-centre (20, 40) in
        ([NORM], (10.0, 0.0, 30.0, 20.0), None),            # bottom-centre (20, 20): outside
        ([NORM], (10.0, 0.0, 30.0, 24.0), ["valley"]),      # bottom-centre on the zone edge
        ([NORM], (10.0, 30.0, 30.0, 48.0), ["valley"]),     # touching the bottom of the frame
        ([PIXELS], BOX, ["gate"]),
        ([PIXELS], (40.0, 10.0, 60.0, 40.0), None),
        ([NORM, PIXELS], BOX, ["valley", "gate"]),
        ([NORM, PIXELS], (40.0, 10.0, 60.0, 40.0), ["valley"]),
        ([], (40.0, 0.0, 60.0, 5.0), []),                   # no zones: everywhere counts
    ],
)
def test_zones_use_the_bottom_centre(zones: list[Zone], box: tuple[float, float, float, float],
                                     expected: list[str] | None) -> None:
    msgs = [m for f in Feed(zones=zones).pattern("xxx", box=box) for m in f]
    assert (list(msgs[0].zones) if msgs else None) == expected


def test_zones_entered_during_the_event_accumulate_and_trigger_an_update() -> None:
    left = Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)))
    right = Zone("right", ((0.5, 0), (1, 0), (1, 1), (0.5, 1)))
    feed = Feed(rules(update_interval_s=0.0), zones=[left, right])
    feed.pattern("xxx", box=(10.0, 10.0, 20.0, 40.0))
    (upd,) = feed.frame(det(box=(12.0, 10.0, 22.0, 40.0)), det(score=0.6, box=(40.0, 10.0, 50.0, 40.0)))
    assert (upd.type, upd.zones, upd.box) == ("update", ("left", "right"), (12.0, 10.0, 22.0, 40.0))


@pytest.mark.parametrize(
    ("box", "starts"),
    [
        ((52.0, 0.0, 64.0, 4.0), False),   # centre (58, 2) inside the mask
        ((40.0, 0.0, 60.0, 20.0), True),   # overlaps the mask, centre (50, 10) outside
        ((10.0, 10.0, 30.0, 40.0), True),
    ],
)
def test_masks_drop_detections_whose_centre_is_inside(box: tuple[float, float, float, float],
                                                      starts: bool) -> None:
    mask = Zone("mask0", ((0.8, 0.0), (1.0, 0.0), (1.0, 0.1), (0.8, 0.1)))
    assert ("new" in types(Feed(masks=[mask]).pattern("xxx", box=box))) is starts


def test_a_masked_detection_does_not_hide_a_good_one() -> None:
    mask = Zone("mask0", ((0.8, 0.0), (1.0, 0.0), (1.0, 0.1), (0.8, 0.1)), pixels=False)
    feed = Feed(masks=[mask])
    msgs = [feed.frame(det(score=0.99, box=(52.0, 0.0, 64.0, 4.0)), det(score=0.7)) for _ in range(3)]
    assert (msgs[2][0].type, msgs[2][0].score, msgs[2][0].box) == ("new", 0.7, BOX)


@pytest.mark.parametrize(
    ("point", "inside"),
    [((5, 5), True), ((0, 0), True), ((10, 5), True), ((15, 5), False), ((5, 10.01), False),
     ((7, 3), False), ((2, 8), True)],
)
def test_zone_contains_concave_polygon_with_edges_inside(point: tuple[float, float], inside: bool) -> None:
    # an L shape: the square (0,0)-(10,10) without its quarter (5,0)-(10,5); edges count as inside
    zone = Zone("l", ((0, 0), (5, 0), (5, 5), (10, 5), (10, 10), (0, 10)), pixels=True)
    assert zone.contains(*point, 100, 100) is inside


def test_zones_from_config_keep_the_pixel_flag() -> None:
    cfg = parse_config("cameras:\n  c:\n    url: 0\n    zones: {a: [[0, 0], [640, 0], [0, 480]]}\n"
                       "    masks: [[[0, 0], [0.5, 0], [0, 0.5]]]\nmodel: {path: m}\n", check_files=False)
    zones, masks = zones_from_config(cfg.cameras["c"])
    assert zones == [Zone("a", ((0.0, 0.0), (640.0, 0.0), (0.0, 480.0)), pixels=True)]
    assert masks == [Zone("mask0", ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5)), pixels=False)]
    assert Zone.from_polygon("p", Polygon(((0, 0), (1, 0), (0, 1)), False)).contains(10, 10, 64, 48)


def test_box_iou() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 1.0


# --------------------------------------------------------------------------- ids and payload


def test_ids_are_stable_over_a_lifecycle_and_differ_between_events() -> None:
    clock = Clock()
    tracker = EventTracker("ridge", rules(update_interval_s=0.0), clock=clock)
    msgs: list[EventMessage] = []
    for seq in range(13):
        items = (det(score=0.5 + (seq % 9) * 0.06),) if seq < 4 or seq >= 9 else ()
        msgs += tracker.update(Detections("ridge", seq, 0, T0 + clock.t, W, H, "m", items), None)
        clock.t += 5.0  # t=0..15 hits; t=45.. hits again
    msgs += tracker.close()
    assert [m.type for m in msgs] == ["new", "update", "end", "new", "update", "end"]
    first, second = {m.id for m in msgs[:3]}, {m.id for m in msgs[3:]}
    assert len(first) == len(second) == 1 and first != second
    assert re.fullmatch(r"1700000000\.000000-[0-9a-f]{6}", msgs[0].id)
    assert re.fullmatch(r"1700000045\.000000-[0-9a-f]{6}", msgs[3].id)


def test_a_bad_id_factory_is_refused() -> None:
    tracker = EventTracker("ridge", rules(confirm_frames=1, window_frames=1), id_factory=lambda *a: "a/b")
    with pytest.raises(ValueError, match="event id must use only"):
        tracker.update(Detections("ridge", 0, 0, T0, W, H, "m", (det(),)), None)


def test_json_payload_fields_exactly() -> None:
    zone = Zone("valley", ((0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)))
    feed = Feed(zones=[zone])
    (new,) = [m for f in feed.pattern("xxx", score=0.87654, box=(10.04, 10.06, 30.0, 40.0)) for m in f]
    assert json.loads(new.to_json()) == {
        "type": "new",
        "id": "ev1",
        "camera": "ridge",
        "label": "smoke",
        "start_time": "2023-11-14T22:13:20.000Z",
        "end_time": None,
        "score": 0.8765,
        "top_score": 0.8765,
        "box": [10.0, 10.1, 30.0, 40.0],
        "zones": ["valley"],
        "frames_seen": 3,
        "snapshot": None,
        "track_id": None,  # issue 14: a tracker fed without a tracking stage is per label (no track id)
        "labels": {"smoke": 3},
        "clip": None,
    }
    (end,) = feed.tracker.close()
    payload = json.loads(end.to_json())
    assert (payload["type"], payload["end_time"]) == ("end", "2023-11-14T22:13:22.000Z")
    assert b"snapshot_jpeg" not in end.to_json()
    validator = jsonschema.Draft202012Validator(load_schema("event"))
    jsonschema.Draft202012Validator.check_schema(load_schema("event"))
    for msg in (new, end):
        validator.validate(json.loads(msg.to_json()))


# --------------------------------------------------------------------------- snapshots


def noise(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_snapshots_on_new_and_when_the_top_score_improves(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", keep=10, max_mb=10, crop=False)
    feed = Feed(rules(update_interval_s=0.0), snapshots=store)
    scores = [0.9, 0.7, 0.8, 0.8, 0.96, 0.9]
    boxes = [BOX, BOX, BOX, (40.0, 5.0, 60.0, 35.0), (40.0, 5.0, 60.0, 35.0), BOX]
    msgs = [m for i, (s, b) in enumerate(zip(scores, boxes, strict=True))
            for m in feed.frame(det(score=s, box=b), image=noise(i))]
    msgs += feed.tracker.close()
    directory = tmp_path / "snapshots" / "ridge"
    # new: the best frame so far (the first, 0.9); update for the move: no better frame, no new file;
    # update for 0.96: a new file; end: nothing better
    assert [(m.type, m.top_score, m.snapshot_jpeg is not None) for m in msgs] == [
        ("new", 0.9, True), ("update", 0.9, False), ("update", 0.96, True), ("update", 0.96, False),
        ("end", 0.96, False)]
    assert [m.snapshot for m in msgs] == [str(directory / "ev1-1.jpg")] * 2 + [str(directory / "ev1-2.jpg")] * 3
    assert sorted(p.name for p in directory.iterdir()) == ["ev1-1.jpg", "ev1-2.jpg"]
    assert decode((directory / "ev1-1.jpg").read_bytes()).shape == (H, W, 3)
    assert msgs[0].snapshot_jpeg == (directory / "ev1-1.jpg").read_bytes()


def test_snapshot_of_a_later_best_frame_is_taken_at_the_end(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=10, max_mb=10)
    feed = Feed(rules(update_interval_s=1000.0), snapshots=store)
    for i, score in enumerate([0.6, 0.6, 0.6, 0.99]):
        feed.frame(det(score=score), image=noise(i))
    (end,) = feed.tracker.close()
    assert end.snapshot_jpeg is not None and end.snapshot == str(tmp_path / "ridge" / "ev1-2.jpg")


def test_crop_snapshot_is_the_box_alone(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=5, max_mb=1, crop=True)
    path, jpeg = store.save("ridge", "e", 1, noise(1), det(box=(10.4, 10.0, 30.2, 40.0)))
    assert decode(jpeg).shape == (30, 21, 3)
    assert path is not None and Path(path).read_bytes() == jpeg
    _, jpeg = store.save("ridge", "e", 2, noise(1), det(box=(60.0, 40.0, 90.0, 90.0)))  # clipped to the frame
    assert decode(jpeg).shape == (8, 4, 3)


def test_snapshot_retention_by_count_deletes_the_oldest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=3, max_mb=100)
    for n in range(5):
        store.save("a" if n % 2 else "b", "ev", n, noise(n), det())
    assert [p.name for p in store.files()] == ["ev-2.jpg", "ev-3.jpg", "ev-4.jpg"]
    assert sorted(p.name for p in tmp_path.glob("*/*")) == ["ev-2.jpg", "ev-3.jpg", "ev-4.jpg"]


def test_snapshot_retention_by_bytes(tmp_path: Path) -> None:
    sizes = [len(SnapshotStore(tmp_path / "probe", 1, 1).encode(noise(n), det())) for n in range(4)]
    limit = sizes[2] + sizes[3]  # room for the last two only
    store = SnapshotStore(tmp_path / "s", keep=100, max_mb=limit / (1024 * 1024))
    for n in range(4):
        store.save("ridge", "ev", n, noise(n), det())
    assert [p.name for p in store.files()] == ["ev-2.jpg", "ev-3.jpg"]
    assert sum(p.stat().st_size for p in (tmp_path / "s").glob("*/*")) == limit
    tiny = SnapshotStore(tmp_path / "t", keep=100, max_mb=1e-6)  # always keeps the newest one
    tiny.save("ridge", "ev", 1, noise(1), det())
    tiny.save("ridge", "ev", 2, noise(2), det())
    assert [p.name for p in tiny.files()] == ["ev-2.jpg"]


def test_snapshot_store_applies_retention_to_files_left_from_before(tmp_path: Path) -> None:
    first = SnapshotStore(tmp_path, keep=10, max_mb=100)
    for n in range(4):
        first.save("ridge", "ev", n, noise(n), det())
    (tmp_path / "ridge" / ".ev-9.jpg.tmp").write_bytes(b"partial")
    second = SnapshotStore(tmp_path, keep=2, max_mb=100)
    assert [p.name for p in second.files()] == ["ev-2.jpg", "ev-3.jpg"]
    assert sorted(p.name for p in (tmp_path / "ridge").iterdir()) == ["ev-2.jpg", "ev-3.jpg"]


def test_unwritable_snapshot_directory_still_returns_the_jpeg(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = SnapshotStore(tmp_path / "file", keep=2, max_mb=1)  # a file where the directory should be
    path, jpeg = store.save("ridge", "ev", 1, noise(1), det())
    assert path is None and jpeg.startswith(b"\xff\xd8")


def test_snapshot_store_from_config(tmp_path: Path) -> None:
    base = f"cameras: {{c: {{url: 0}}}}\nmodel: {{path: m}}\nstate_dir: {tmp_path}\n"
    cfg = parse_config(base, check_files=False)
    store = SnapshotStore.from_config(cfg.events.snapshots, cfg.state_dir)
    assert store is not None and store.directory == tmp_path / "snapshots" and store.keep == 200
    off = parse_config(base + "events: {snapshots: {enabled: false}}\n", check_files=False)
    assert SnapshotStore.from_config(off.events.snapshots, off.state_dir) is None
    tracker = EventTracker.from_config("c", cfg.cameras["c"], cfg.events, store)
    assert tracker.camera == "c" and tracker.zones == ()


# --------------------------------------------------------------------------- the daemon stage


class FakeMqtt:
    """Records what EventStage publishes (the two MqttPublisher methods it uses)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | str, bool]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        self.sent.append((topic, payload, retain))
        return True

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        self.sent.append((topic, b"" if payload is None else payload, True))  # None: cleared (empty)


def test_stage_publishes_through_topics_and_counts_in_metrics(tmp_path: Path) -> None:
    cfg = parse_config(f"cameras: {{ridge: {{url: 0}}, gone: {{url: 1}}}}\nmodel: {{path: m}}\nstate_dir: {tmp_path}\n"
                       "events: {default: {confirm_frames: 1, window_frames: 1}}\n", check_files=False)
    mqtt, metrics = FakeMqtt(), Metrics(CollectorRegistry())
    stage = EventStage.from_config(cfg.events, cfg.cameras, cfg.state_dir, mqtt, Topics("site/edgedet", "n1"),
                                   metrics)
    assert stage is not None and sorted(stage.trackers) == ["gone", "ridge"]
    stage.on_frame(Detections("ridge", 0, 0, T0, W, H, "m", (det(), det("a/b"))), noise(1))
    topics = [(t, retain) for t, _, retain in mqtt.sent]
    assert topics == [  # label 'a/b' (first: labels go in order) becomes a safe level (issue 10 item 12)
        ("site/edgedet/n1/ridge/events", False), ("site/edgedet/n1/ridge/snapshot", True),
        ("site/edgedet/n1/ridge/a_b_07f4401c/active", True),
        ("site/edgedet/n1/ridge/events", False), ("site/edgedet/n1/ridge/snapshot", True),
        ("site/edgedet/n1/ridge/smoke/active", True),
    ]
    assert metrics.registry.get_sample_value(
        "edgedet_events_total", {"camera": "ridge", "label": "smoke", "type": "new"}) == 1
    assert metrics.registry.get_sample_value("edgedet_events_active", {"camera": "ridge", "label": "smoke"}) == 1
    mqtt.sent.clear()
    stage.reconfigure(cfg.events, {"ridge": cfg.cameras["ridge"]}, cfg.state_dir)  # camera 'gone' removed
    assert sorted(stage.trackers) == ["ridge"] and mqtt.sent == []
    stage.close()
    assert [(t, p) for t, p, _ in mqtt.sent if t.endswith("/active")] == [
        ("site/edgedet/n1/ridge/a_b_07f4401c/active", "OFF"), ("site/edgedet/n1/ridge/smoke/active", "OFF")]
    off = parse_config("cameras: {c: {url: 0}}\nmodel: {path: m}\nevents: {enabled: false}\n", check_files=False)
    assert EventStage.from_config(off.events, off.cameras, tmp_path, mqtt, Topics("e", "n"), metrics) is None


# --------------------------------------------------------------------------- issue 10 item 12: snapshots after changes


def events_cfg(tmp_path: Path, snapshots: str, enabled: bool = True) -> Any:
    return parse_config(
        f"cameras: {{ridge: {{url: 0}}, gone: {{url: 1}}}}\nmodel: {{path: m}}\nstate_dir: {tmp_path}\n"
        f"events: {{enabled: {str(enabled).lower()}, default: {{confirm_frames: 1, window_frames: 1, "
        f"clear_after_s: 0.001}}, snapshots: {snapshots}}}\n", check_files=False)


def feed_events(stage: EventStage, camera: str, first_seq: int, count: int) -> None:
    """``count`` frames, each a new event (every frame's better box gives a snapshot)."""
    for i in range(count):
        stage.on_frame(Detections(camera, first_seq + i, 0, T0, W, H, "m", (det(score=0.5 + i / 100),)),
                       noise(first_seq + i))
        stage.close()  # end it: the next frame starts a new event


def test_reload_keeps_one_snapshot_store_and_applies_new_limits_and_disable(tmp_path: Path) -> None:
    cfg = events_cfg(tmp_path, "{keep: 6}")
    mqtt, metrics = FakeMqtt(), Metrics(CollectorRegistry())
    stage = EventStage.from_config(cfg.events, cfg.cameras, cfg.state_dir, mqtt, Topics("e", "n"), metrics)
    assert stage is not None and stage.store is not None
    store = stage.store
    feed_events(stage, "ridge", 0, 4)
    feed_events(stage, "gone", 0, 4)
    assert len(store.files()) == 6  # one limit across cameras
    for _ in range(3):  # before: every reload built a new store with its own limits
        stage.reconfigure(events_cfg(tmp_path, "{keep: 3}").events, cfg.cameras, cfg.state_dir)
        assert stage.store is store
    assert len(store.files()) == 3 and len(list((tmp_path / "snapshots").glob("*/*.jpg"))) == 3
    stage.reconfigure(events_cfg(tmp_path, "{enabled: false}").events, cfg.cameras, cfg.state_dir)
    before = sorted((tmp_path / "snapshots").glob("*/*.jpg"))
    mqtt.sent.clear()
    feed_events(stage, "ridge", 100, 2)
    assert sorted((tmp_path / "snapshots").glob("*/*.jpg")) == before  # disabled on the running cameras
    assert not any(t.endswith("/snapshot") for t, _, _ in mqtt.sent)
    stage.on_frame(Detections("ridge", 200, 0, T0, W, H, "m", (det(),)), noise(3))  # an active event...
    stage.reconfigure(events_cfg(tmp_path, "{}", enabled=False).events, cfg.cameras, cfg.state_dir)
    assert stage.trackers == {}  # ...ends with events.enabled: false, and no camera has events any more
    assert [json.loads(p)["type"] for t, p, _ in mqtt.sent if t.endswith("/events")][-1] == "end"
    mqtt.sent.clear()
    feed_events(stage, "ridge", 300, 2)
    assert mqtt.sent == []


def test_forget_camera_ends_its_events_and_clears_its_active_topics(tmp_path: Path) -> None:
    cfg = events_cfg(tmp_path, "{enabled: false}")
    mqtt = FakeMqtt()
    stage = EventStage.from_config(cfg.events, cfg.cameras, cfg.state_dir, mqtt, Topics("e", "n"),
                                   Metrics(CollectorRegistry()))
    assert stage is not None
    stage.on_frame(Detections("gone", 0, 0, T0, W, H, "m", (det("person/car"),)), None)
    mqtt.sent.clear()
    stage.forget_camera("gone")
    assert [(t, p) for t, p, _ in mqtt.sent if t.endswith("/active")] == [
        ("e/n/gone/person_car_" + f"{zlib.crc32(b'person/car'):08x}/active", "OFF"),
        ("e/n/gone/person_car_" + f"{zlib.crc32(b'person/car'):08x}/active", b""),
    ]
    assert sorted(stage.trackers) == ["ridge"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (root only: CI runs as root); unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def snapshot_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edgedet.events.snapshots"]


def test_full_disk_leaves_no_tmp_file_and_snapshots_resume(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.events.snapshots")
    store = SnapshotStore(tmpfs / "snapshots", keep=100, max_mb=100)
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True, check=False)  # ENOSPC
    image = noise(1, 480, 640)  # a JPEG of ~100+ KiB: it cannot fit
    results = [store.save("ridge", f"ev{i}", 1, image, det(box=(0, 0, 600, 400))) for i in range(3)]
    assert [path for path, _ in results] == [None, None, None]
    assert all(jpeg.startswith(b"\xff\xd8") for _, jpeg in results)  # still there to publish over MQTT
    assert sorted(p.name for p in tmpfs.rglob("*") if p.is_file()) == ["filler"]  # no .tmp left behind
    filler.unlink()
    path, _ = store.save("ridge", "ev9", 1, image, det(box=(0, 0, 600, 400)))
    assert path is not None and Path(path).is_file() and store.files() == [Path(path)]
    logs = snapshot_logs(caplog)
    assert [level for level, _ in logs] == [logging.WARNING, logging.INFO]  # once per state change
    assert "No space left on device" in logs[0][1]


def test_read_only_state_dir_keeps_publishing_and_resumes(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edgedet.events.snapshots")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    cfg = parse_config(f"cameras: {{ridge: {{url: 0}}}}\nmodel: {{path: m}}\nstate_dir: {tmpfs}\n"
                       "events: {default: {confirm_frames: 1, window_frames: 1}}\n", check_files=False)
    mqtt = FakeMqtt()
    stage = EventStage.from_config(cfg.events, cfg.cameras, cfg.state_dir, mqtt, Topics("e", "n"),
                                   Metrics(CollectorRegistry()))  # start-up on a read-only state dir
    assert stage is not None
    feed_events(stage, "ridge", 0, 3)
    snaps = [p for t, p, _ in mqtt.sent if t.endswith("/snapshot")]
    assert len(snaps) == 3 and all(isinstance(p, bytes) and p.startswith(b"\xff\xd8") for p in snaps)
    assert [json.loads(p)["snapshot"] for t, p, _ in mqtt.sent if t.endswith("/events")][:1] == [None]
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    feed_events(stage, "ridge", 10, 1)
    assert len(list((tmpfs / "snapshots" / "ridge").glob("*.jpg"))) == 1
    logs = snapshot_logs(caplog)
    assert [level for level, _ in logs] == [logging.WARNING, logging.INFO]
    assert "Read-only file system" in logs[0][1]
