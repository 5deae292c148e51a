"""The fleet's history in SQLite (WAL): event lifecycle messages, event snapshots, node
availability changes and verdicts.

One connection, used from the ingest thread (writes) and the API (reads) under one lock: the
rates at fleet scale are hundreds of rows a second at most, far below SQLite's. ``max_events``
bounds the table: the oldest events (and their messages and snapshots) are pruned beyond it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["History"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL, id TEXT NOT NULL, camera TEXT NOT NULL, label TEXT, type TEXT NOT NULL,
    start_time TEXT, end_time TEXT, top_score REAL, last TEXT NOT NULL, first_received REAL NOT NULL,
    last_received REAL NOT NULL, PRIMARY KEY (node, id));
CREATE INDEX IF NOT EXISTS events_recent ON events (first_received);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
    payload TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS messages_event ON messages (node, id);
CREATE TABLE IF NOT EXISTS snapshots (
    node TEXT NOT NULL, id TEXT NOT NULL, jpeg BLOB NOT NULL, received REAL NOT NULL, PRIMARY KEY (node, id));
CREATE TABLE IF NOT EXISTS availability (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, online INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    verdict_id TEXT PRIMARY KEY, node TEXT NOT NULL, id TEXT NOT NULL, verdict TEXT NOT NULL,
    payload TEXT NOT NULL, ts REAL NOT NULL);
"""


class History:
    def __init__(self, path: str | Path, max_events: int = 100_000) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._inserts = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- writes (ingest thread)

    def add_event(self, event: dict[str, Any]) -> None:
        """One lifecycle message (``event`` carries ``node``, ``camera`` and ``received_at``)."""
        node, eid, now = event["node"], event["id"], float(event["received_at"])
        payload = json.dumps({k: v for k, v in event.items() if k != "received_at"}, separators=(",", ":"))
        with self._lock, self._db:
            self._db.execute("INSERT INTO messages (node, id, type, payload, received) VALUES (?,?,?,?,?)",
                             (node, eid, event["type"], payload, now))
            self._db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (node, id) DO UPDATE SET "
                "type=excluded.type, end_time=excluded.end_time, top_score=excluded.top_score, "
                "last=excluded.last, last_received=excluded.last_received",
                (node, eid, event["camera"], event.get("label"), event["type"], event.get("start_time"),
                 event.get("end_time"), event.get("top_score"), payload, now, now))
            self._inserts += 1
            if self._inserts % 1000 == 0:
                self._prune()

    def add_snapshot(self, node: str, camera: str, jpeg: bytes, now: float) -> str | None:
        """Attach the camera's latest snapshot to its most recent event; that event's id, or None."""
        with self._lock, self._db:
            row = self._db.execute("SELECT id FROM events WHERE node=? AND camera=? ORDER BY first_received DESC "
                                   "LIMIT 1", (node, camera)).fetchone()
            if row is None:
                return None
            self._db.execute("INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?)", (node, row[0], jpeg, now))
            return str(row[0])

    def add_availability(self, node: str, online: bool, now: float) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO availability (node, online, ts) VALUES (?,?,?)", (node, int(online), now))

    def add_verdict(self, verdict: dict[str, Any], node: str, now: float) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?)",
                             (verdict["verdict_id"], node, verdict["event_id"], verdict["verdict"],
                              json.dumps(verdict, separators=(",", ":")), now))

    def _prune(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        if count <= self.max_events:
            return
        cutoff = self._db.execute("SELECT first_received FROM events ORDER BY first_received DESC LIMIT 1 OFFSET ?",
                                  (self.max_events,)).fetchone()[0]
        for table in ("messages", "snapshots"):
            self._db.execute(f"DELETE FROM {table} WHERE (node, id) IN "  # noqa: S608 (fixed table names)
                             "(SELECT node, id FROM events WHERE first_received <= ?)", (cutoff,))
        self._db.execute("DELETE FROM events WHERE first_received <= ?", (cutoff,))

    # ---------------------------------------------------------------- reads (API)

    def events(self, node: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent events first: the last lifecycle message of each, with ``has_snapshot`` and
        the latest ``verdict``."""
        where, args = ("WHERE e.node=?", [node]) if node else ("", [])
        sql = ("SELECT e.last, e.first_received, e.last_received, s.id IS NOT NULL, "
               "(SELECT verdict FROM verdicts v WHERE v.node=e.node AND v.id=e.id ORDER BY ts DESC LIMIT 1) "
               f"FROM events e LEFT JOIN snapshots s ON s.node=e.node AND s.id=e.id {where} "
               "ORDER BY e.first_received DESC LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, [*args, int(limit)]).fetchall()
        return [{**json.loads(last), "first_received": first, "last_received": lastr, "has_snapshot": bool(snap),
                 "verdict": verdict} for last, first, lastr, snap, verdict in rows]

    def messages(self, node: str | None = None) -> list[dict[str, Any]]:
        """Every stored lifecycle message in arrival order (of one node, or all)."""
        where, args = ("WHERE node=?", [node]) if node else ("", [])
        with self._lock:
            rows = self._db.execute(f"SELECT payload, received FROM messages {where} ORDER BY seq", args).fetchall()
        return [{**json.loads(p), "received_at": r} for p, r in rows]

    def snapshot(self, node: str, event_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT jpeg FROM snapshots WHERE node=? AND id=?", (node, event_id)).fetchone()
        return None if row is None else bytes(row[0])

    def event_camera(self, node: str, event_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT camera FROM events WHERE node=? AND id=?", (node, event_id)).fetchone()
        return None if row is None else str(row[0])

    def availability(self, node: str | None = None) -> list[tuple[str, bool, float]]:
        where, args = ("WHERE node=?", [node]) if node else ("", [])
        with self._lock:
            rows = self._db.execute(f"SELECT node, online, ts FROM availability {where} ORDER BY seq", args).fetchall()
        return [(n, bool(o), t) for n, o, t in rows]
