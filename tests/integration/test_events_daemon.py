"""Events from the real model on a clip where a person enters, leaves and comes back."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from edgedet.schemas import load_schema

pytestmark = pytest.mark.integration
NODE = "testnode"


def test_one_new_end_pair_per_appearance(tmp_path: Path, assets, start_daemon):
    proc, sub, _ = start_daemon(
        {"yard": {"url": str(assets.enter_leave), "realtime": True, "loop": False}},
        events={
            "default": {"confirm_frames": 3, "window_frames": 5, "min_score": 0.3, "clear_after_s": 1.5,
                        "update_interval_s": 1},
            "snapshots": {"enabled": True, "keep": 10, "max_mb": 5},
        },
    )
    assert proc.wait(timeout=180) == 0, proc.output()
    sub.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/events") and b'"end"' in x.payload) >= 2,
                 timeout=10, what="two end events")
    events = [json.loads(m.payload) for m in sub.messages(f"edgedet/{NODE}/yard/events")]
    schema = load_schema("event")
    for e in events:
        jsonschema.validate(e, schema)
    lifecycle = [(e["type"], e["id"]) for e in events if e["type"] != "update"]
    assert [t for t, _ in lifecycle] == ["new", "end", "new", "end"], lifecycle
    first, second = lifecycle[0][1], lifecycle[2][1]
    assert lifecycle[1][1] == first and lifecycle[3][1] == second and first != second
    assert all(e["label"] == "Normal" and e["camera"] == "yard" for e in events)
    ends = [e for e in events if e["type"] == "end"]
    assert all(e["end_time"] and e["frames_seen"] >= 3 for e in ends)
    active = [m.payload for m in sub.messages(f"edgedet/{NODE}/yard/Normal/active")]
    assert active == [b"ON", b"OFF", b"ON", b"OFF"]
    snapshots = sub.messages(f"edgedet/{NODE}/yard/snapshot")
    assert snapshots and all(m.payload[:2] == b"\xff\xd8" for m in snapshots)  # JPEG
    saved = list((tmp_path / "state" / "snapshots" / "yard").glob("*.jpg"))
    assert saved and events[0]["snapshot"] and Path(events[0]["snapshot"]).is_file()
    print(f"events: {lifecycle}, {len(snapshots)} snapshots")


def test_tracked_objects_one_event_and_one_track_per_appearance_with_clips(tmp_path: Path, assets, start_daemon):
    """Issue 14: with the tracker (the default) each appearance is one object: one track id, one
    new/end pair whatever the Normal/Fall flicker, confirmed by the tube rules (a person standing
    persists with a stable box), and an MP4 clip from pre- to post-capture."""
    import cv2

    proc, sub, _ = start_daemon(
        {"yard": {"url": str(assets.enter_leave), "realtime": True, "loop": False, "tracking": {"max_age_s": 2}}},
        events={
            "default": {"confirm_frames": 3, "window_frames": 5, "min_score": 0.3, "clear_after_s": 1.5,
                        "update_interval_s": 1},
            "labels": {"Normal": {"confirm": "tube"}},  # the real model through the tube rules: a person
            "clips": {"enabled": True, "pre_capture_s": 1.0, "post_capture_s": 1.0},  # standing is a tube
        },
    )
    assert proc.wait(timeout=180) == 0, proc.output()
    sub.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/events") and b'"end"' in x.payload) >= 2,
                 timeout=10, what="two end events")
    events = [json.loads(m.payload) for m in sub.messages(f"edgedet/{NODE}/yard/events")]
    schema = load_schema("event")
    for e in events:
        jsonschema.validate(e, schema)
    news = [e for e in events if e["type"] == "new"]
    assert len(news) == 2, [(e["type"], e["label"], e["track_id"]) for e in events]
    tracks = [e["track_id"] for e in news]
    assert all(t and t.startswith("yard-") for t in tracks) and tracks[0] != tracks[1]
    for e in events:  # every message of an event names that event's object
        assert e["track_id"] == next(n["track_id"] for n in news if n["id"] == e["id"])
    assert all(sum(e["labels"].values()) >= 3 for e in events if e["type"] == "end")
    detections = [json.loads(m.payload) for m in sub.messages(f"edgedet/{NODE}/yard/detections")]
    ids = {d["track_id"] for msg in detections for d in msg["detections"]} - {None}
    assert set(tracks) <= ids
    # Clips: written post_capture_s after each end; OpenCV reads them back.
    clips = [e["clip"] for e in events if e["type"] == "end"]
    assert all(clips) and len(set(clips)) == 2
    for clip in clips:
        cap = cv2.VideoCapture(clip)
        frames, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        assert frames >= 10 and fps > 0, (clip, frames, fps)
        print(f"clip {Path(clip).name}: {frames} frames at {fps:.1f} fps = {frames / fps:.1f} s, "
              f"{Path(clip).stat().st_size / 1024:.0f} KiB")
    print(f"tracks per appearance: {tracks}; labels: {[e['labels'] for e in events if e['type'] == 'end']}")
