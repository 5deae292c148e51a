"""Event history that survives restarts: events and their feedback in SQLite at
``<state_dir>/web/history.sqlite3`` (WAL).

Lifecycle messages arrive from the inference workers through :meth:`EventHistory.submit`, which
only puts them on a bounded queue; the ``web-history`` thread writes them. Retention: at most
``max_events`` events, none older than ``max_age_days``, the database under ``max_mb`` (oldest
events first). Files an event owns (its raw frame for the dataset) go with it; snapshot JPEGs are
the snapshot store's and follow its own ``keep`` / ``max_mb``. A full disk or any SQLite error is
logged once and the daemon goes on detecting.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedet.config.sections import WebHistoryConfig

__all__ = ["EventHistory", "Pending"]

log = logging.getLogger("edgedet.web")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    camera TEXT NOT NULL,
    label TEXT NOT NULL,
    state TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    start_ts REAL NOT NULL,
    updated_ts REAL NOT NULL,
    score REAL NOT NULL,
    top_score REAL NOT NULL,
    box TEXT NOT NULL,
    zones TEXT NOT NULL,
    frames_seen INTEGER NOT NULL,
    snapshot TEXT,
    snapshots TEXT NOT NULL,
    timeline TEXT NOT NULL,
    frame TEXT,
    clip TEXT,
    track_id TEXT,
    verdict TEXT,
    category TEXT,
    note TEXT,
    feedback_time TEXT
);
CREATE INDEX IF NOT EXISTS events_start ON events (start_ts);
CREATE INDEX IF NOT EXISTS events_camera ON events (camera, start_ts);
CREATE TABLE IF NOT EXISTS feedback (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    verdict TEXT NOT NULL,
    category TEXT,
    note TEXT,
    time TEXT NOT NULL
);
"""
_QUEUE_SIZE = 1000

#: One queued write: the lifecycle message (as published) and, optionally, a function that stores
#: the event's raw frame and returns its path (run by the writer thread, off the hot path).
Pending = tuple[dict[str, Any], Callable[[], str | None] | None]


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class EventHistory:
    """Events and feedback in SQLite; safe to use from any thread.

    ``page_limit`` caps the database (``PRAGMA max_page_count``): a stand-in for a full disk in tests.
    """

    def __init__(self, path: str | os.PathLike[str], limits: WebHistoryConfig,
                 page_limit: int | None = None) -> None:
        self.path = Path(path)
        self.limits = limits
        self._lock = threading.Lock()
        self._queue: queue.Queue[Pending | None] = queue.Queue(_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._failing = False
        self.dropped = 0  # messages not stored (queue full or a write error)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if page_limit is not None:
            self._db.execute(f"PRAGMA max_page_count={int(page_limit)}")
        self._db.executescript(_SCHEMA)

    # ----------------------------------------------------------------- writer thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="web-history", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("thread %s still alive %.1f s after stop", self._thread.name, timeout)
        with self._lock:
            self._db.close()

    def submit(self, message: dict[str, Any], frame: Callable[[], str | None] | None = None) -> None:
        """Queue one lifecycle message for writing (never blocks; counted in ``dropped`` when full)."""
        try:
            self._queue.put_nowait((message, frame))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued message is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            with self._queue.all_tasks_done:
                self._queue.all_tasks_done.wait(0.05)
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                message, frame = item
                self.record(message, frame() if frame is not None else None)
            except Exception:  # never let one bad message end the writer
                log.exception("web history: cannot store an event message")
            finally:
                self._queue.task_done()

    # ----------------------------------------------------------------- writes

    def record(self, msg: dict[str, Any], frame: str | None = None, now: float | None = None) -> bool:
        """Store one lifecycle message (insert on ``new``, update otherwise); False when it failed."""
        now = time.time() if now is None else now
        step = {"type": msg["type"], "time": iso_time(now), "score": msg["score"], "frames_seen": msg["frames_seen"]}
        try:
            with self._lock:
                row = self._db.execute("SELECT timeline, snapshots, frame FROM events WHERE id = ?",
                                       (msg["id"],)).fetchone()
                timeline = json.loads(row["timeline"]) if row else []
                snapshots = json.loads(row["snapshots"]) if row else []
                timeline.append(step)
                if msg.get("snapshot") and msg["snapshot"] not in snapshots:
                    snapshots.append(msg["snapshot"])
                frame = frame or (row["frame"] if row else None)
                values = (msg["camera"], msg["label"], msg["type"], msg["start_time"], msg["end_time"],
                          now, float(msg["score"]), float(msg["top_score"]), json.dumps(msg["box"]),
                          json.dumps(msg["zones"]), int(msg["frames_seen"]), msg.get("snapshot"),
                          json.dumps(snapshots), json.dumps(timeline), frame, msg.get("clip"), msg.get("track_id"))
                if row is None:
                    self._db.execute(
                        "INSERT INTO events (camera, label, state, start_time, end_time, updated_ts, score, "
                        "top_score, box, zones, frames_seen, snapshot, snapshots, timeline, frame, clip, track_id, "
                        "start_ts, id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, now, msg["id"]))
                    self._prune(now)
                else:
                    self._db.execute(
                        "UPDATE events SET camera=?, label=?, state=?, start_time=?, end_time=?, updated_ts=?, "
                        "score=?, top_score=?, box=?, zones=?, frames_seen=?, snapshot=?, snapshots=?, "
                        "timeline=?, frame=?, clip=?, track_id=? WHERE id=?", (*values, msg["id"]))
        except sqlite3.Error as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def set_feedback(self, event_id: str, verdict: str, category: str | None, note: str,
                     now: float | None = None) -> dict[str, Any] | None:
        """Store a verdict with the event; the updated event, or None when there is no such event.
        Raises ``sqlite3.Error`` when it cannot be written (the API answers 503)."""
        stamp = iso_time(time.time() if now is None else now)
        with self._lock:
            found = self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
            if found is None:
                return None
            self._db.execute("BEGIN")
            try:
                self._db.execute("UPDATE events SET verdict=?, category=?, note=?, feedback_time=? WHERE id=?",
                                 (verdict, category, note, stamp, event_id))
                self._db.execute("INSERT INTO feedback (event_id, verdict, category, note, time) "
                                 "VALUES (?, ?, ?, ?, ?)", (event_id, verdict, category, note, stamp))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        return self.get(event_id)

    # ----------------------------------------------------------------- reads

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else _as_dict(row)

    def frame_path(self, event_id: str) -> str | None:
        """The event's stored raw frame (for the dataset), or None."""
        with self._lock:
            row = self._db.execute("SELECT frame FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else row["frame"]

    def query(self, camera: str | None = None, label: str | None = None, since: float | None = None,
              until: float | None = None, verdict: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Events, newest first. ``verdict``: ``true_alarm`` / ``false_alarm`` / ``none`` (no verdict yet)."""
        where: list[str] = []
        args: list[object] = []
        for column, value in (("camera", camera), ("label", label)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("start_ts >= ?")
            args.append(since)
        if until is not None:
            where.append("start_ts <= ?")
            args.append(until)
        if verdict == "none":
            where.append("verdict IS NULL")
        elif verdict is not None:
            where.append("verdict = ?")
            args.append(verdict)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY start_ts DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_as_dict(row) for row in rows]

    def active(self) -> dict[str, list[dict[str, Any]]]:
        """Events not ended yet, per camera."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            rows = self._db.execute("SELECT * FROM events WHERE state != 'end' ORDER BY start_ts").fetchall()
        for row in rows:
            out.setdefault(row["camera"], []).append(_as_dict(row))
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def size_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    # ----------------------------------------------------------------- retention

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _prune(self, now: float) -> None:
        """Oldest first past max_events, max_age_days, max_mb (called with the lock held)."""
        limits = self.limits
        gone: list[sqlite3.Row] = []
        gone += self._db.execute("SELECT id, frame FROM events WHERE start_ts < ?",
                                 (now - limits.max_age_days * 86400,)).fetchall()
        extra = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0] - limits.max_events
        if extra > 0:
            gone += self._db.execute("SELECT id, frame FROM events ORDER BY start_ts LIMIT ?", (extra,)).fetchall()
        self._delete(gone)
        max_bytes = limits.max_mb * 1024 * 1024
        while self._used_bytes() > max_bytes:
            count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if count <= 1:
                break
            batch = self._db.execute("SELECT id, frame FROM events ORDER BY start_ts LIMIT ?",
                                     (max(1, count // 10),)).fetchall()
            self._delete(batch)
        self._db.execute("PRAGMA incremental_vacuum")

    def _delete(self, rows: list[sqlite3.Row]) -> None:
        for row in rows:
            self._db.execute("DELETE FROM events WHERE id = ?", (row["id"],))
            self._db.execute("DELETE FROM feedback WHERE event_id = ?", (row["id"],))
            if row["frame"]:
                for path in (Path(row["frame"]), Path(row["frame"]).with_suffix(".json")):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        log.warning("web history: cannot delete %s: %s", path, exc.strerror or exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        self.dropped += 1
        if not self._failing:
            log.warning("web history: cannot write %s: %s (events are still published)", self.path, exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("web history: writing %s again", self.path)
            self._failing = False


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in ("box", "zones", "snapshots", "timeline"):
        out[key] = json.loads(out[key])
    out["feedback"] = None if out.pop("verdict") is None else {
        "verdict": row["verdict"], "category": out.pop("category"), "note": out.pop("note"),
        "time": out.pop("feedback_time")}
    for key in ("category", "note", "feedback_time"):
        out.pop(key, None)
    out.pop("frame")
    out["has_frame"] = bool(row["frame"])
    out["type"] = out.pop("state")
    out.pop("updated_ts")
    out["start_ts"] = round(out["start_ts"], 3)
    return out
