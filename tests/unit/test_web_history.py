"""EventHistory: events + feedback in SQLite, retention, restart persistence and a full disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from edgedet.config.sections import WebHistoryConfig
from edgedet.web.history import EventHistory

LIMITS = WebHistoryConfig()


def msg(event_id: str, kind: str = "new", camera: str = "gate", label: str = "smoke", score: float = 0.8,
        snapshot: str | None = None, frames: int = 3) -> dict[str, Any]:
    return {"type": kind, "id": event_id, "camera": camera, "label": label,
            "start_time": "2026-05-01T12:00:00.000Z", "end_time": "2026-05-01T12:01:00.000Z" if kind == "end" else None,
            "score": score, "top_score": max(score, 0.8), "box": [1.0, 2.0, 3.0, 4.0], "zones": ["a"],
            "frames_seen": frames, "snapshot": snapshot}


@pytest.fixture
def history(tmp_path: Path) -> Any:
    h = EventHistory(tmp_path / "h.sqlite3", LIMITS)
    yield h
    h.close()


def test_lifecycle_fields_and_timeline(history: EventHistory) -> None:
    assert history.record(msg("e1", "new", snapshot="/s/e1-1.jpg"), now=100.0)
    assert history.record(msg("e1", "update", score=0.9, frames=7, snapshot="/s/e1-2.jpg"), now=105.0)
    assert history.record(msg("e1", "end", frames=9, snapshot="/s/e1-2.jpg"), now=110.0)
    ev = history.get("e1")
    assert ev is not None
    assert (ev["type"], ev["frames_seen"], ev["snapshot"], ev["end_time"]) == (
        "end", 9, "/s/e1-2.jpg", "2026-05-01T12:01:00.000Z")
    assert ev["snapshots"] == ["/s/e1-1.jpg", "/s/e1-2.jpg"]
    assert [s["type"] for s in ev["timeline"]] == ["new", "update", "end"]
    assert ev["feedback"] is None and ev["start_ts"] == 100.0
    assert history.get("nope") is None


def test_query_filters_newest_first(history: EventHistory) -> None:
    history.record(msg("a", camera="gate", label="smoke"), now=100.0)
    history.record(msg("b", camera="yard", label="smoke"), now=200.0)
    history.record(msg("c", camera="gate", label="fire"), now=300.0)
    history.set_feedback("a", "false_alarm", "fog", "")
    ids = lambda **kw: [e["id"] for e in history.query(**kw)]  # noqa: E731
    assert ids() == ["c", "b", "a"]
    assert ids(camera="gate") == ["c", "a"]
    assert ids(label="smoke") == ["b", "a"]
    assert ids(since=150.0) == ["c", "b"]
    assert ids(until=250.0) == ["b", "a"]
    assert ids(verdict="false_alarm") == ["a"]
    assert ids(verdict="none") == ["c", "b"]
    assert ids(limit=1) == ["c"]
    assert set(history.active()) == {"gate", "yard"}


def test_feedback_is_stored_with_the_event(history: EventHistory) -> None:
    history.record(msg("e1"), now=100.0)
    ev = history.set_feedback("e1", "false_alarm", "glare", "sun at dawn", now=200.0)
    assert ev is not None
    assert ev["feedback"] == {"verdict": "false_alarm", "category": "glare", "note": "sun at dawn",
                              "time": "1970-01-01T00:03:20.000Z"}
    assert history.set_feedback("nope", "true_alarm", None, "") is None


def test_history_and_verdicts_survive_a_restart(tmp_path: Path) -> None:
    first = EventHistory(tmp_path / "h.sqlite3", LIMITS)
    first.start()
    first.submit(msg("e1"))
    first.submit(msg("e1", "end"))
    assert first.flush(5.0)
    first.set_feedback("e1", "true_alarm", None, "real smoke")
    first.close()
    again = EventHistory(tmp_path / "h.sqlite3", LIMITS)
    try:
        ev = again.get("e1")
        assert ev is not None and ev["type"] == "end"
        assert ev["feedback"]["verdict"] == "true_alarm"  # type: ignore[index]
        assert [s["type"] for s in ev["timeline"]] == ["new", "end"]
    finally:
        again.close()


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    h = EventHistory(tmp_path / "h.sqlite3", WebHistoryConfig(max_events=10, max_age_days=1.0))
    try:
        for n in range(15):
            h.record(msg(f"e{n:02d}"), now=1_000_000.0 + n)
        assert h.count() == 10
        assert [e["id"] for e in h.query(limit=100)][-1] == "e05"
        h.record(msg("late"), now=1_000_000.0 + 86400 + 100)  # a day later: every older event is gone
        assert [e["id"] for e in h.query(limit=100)] == ["late"]
    finally:
        h.close()


def test_retention_by_bytes_deletes_the_frames_of_pruned_events(tmp_path: Path) -> None:
    h = EventHistory(tmp_path / "h.sqlite3", WebHistoryConfig(max_mb=0.25))
    frame = tmp_path / "frames" / "e000.jpg"
    frame.parent.mkdir()
    frame.write_bytes(b"jpeg")
    frame.with_suffix(".json").write_text("{}")
    try:
        h.record(msg("e000"), frame=str(frame), now=1.0)
        big = "x" * 4000
        for n in range(1, 200):
            h.record({**msg(f"e{n:03d}"), "zones": [big]}, now=1.0 + n)
        assert h.size_bytes() <= 0.25 * 1024 * 1024
        assert 10 < h.count() < 199
        assert h.get("e000") is None and not frame.exists() and not frame.with_suffix(".json").exists()
        assert h.get("e199") is not None
    finally:
        h.close()


def test_a_full_disk_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = EventHistory(tmp_path / "h.sqlite3", LIMITS, page_limit=12)  # SQLITE_FULL after a few pages
    h.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edgedet.web"):
            for n in range(300):
                h.submit({**msg(f"e{n:03d}"), "zones": ["z" * 2000]})
            assert h.flush(10.0)
        assert h.dropped > 0
        warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(warnings) == 1 and "full" in warnings[0].getMessage()
        assert h.count() >= 1  # what fitted is still there and readable
    finally:
        h.close()
