"""On-disk outbox for QoS>=1 MQTT messages: nothing accepted is lost across a broker outage, a
``kill -9`` of the daemon, a damaged file or a state dir that cannot be written for a while.

SQLite in WAL mode (``synchronous=NORMAL``) at ``<state_dir>/outbox.sqlite3`` (the file format,
integrity check, salvage and age clock are in ``outbox_db.py``). ``add()`` commits a row before it
returns, so a message accepted by ``MqttPublisher.publish()`` survives a crash of the process (a
power cut may lose the last commits: WAL + NORMAL syncs at checkpoints only). The publisher
removes a row once the broker has acknowledged it (PUBACK) and replays every remaining row, in id
(= insertion) order, after each (re)connect. Delivery is therefore at-least-once: a message in
flight when the connection drops is sent again, byte for byte, and consumers dedupe on
``(topic, seq, ts)``.

Bounds: at most ``max_messages`` rows, ``max_mb`` MiB of payload and none older than
``max_age_s``. Age is box uptime (``outbox_db.AgeClock``), never the wall clock, so an NTP jump
neither expires nor keeps a backlog. Over a size bound, per-frame detections go first (oldest
first); events only once no detection is left. Drops are counted in
``edgedet_outbox_dropped_total{reason}`` and ``edgedet_outbox_dropped_by_kind_total{reason,kind}``.

Faults (never an exit): a file that fails its integrity check at open, or a read that finds a
damaged page while running, moves the file aside (``<name>.corrupt-<epoch>``), copies every
readable row into a new file and carries on (``edgedet_outbox_corrupt_total``). A state dir that
cannot be written (read-only, full, owned by another user) degrades the outbox to memory (bounded
by ``_MEMORY_MAX_MESSAGES`` / ``_MEMORY_MAX_MB``; ``edgedet_outbox_degraded`` = 1, one WARNING);
the disk is retried with backoff and, once it works, the rows in memory are written to it. Each
change of store bumps ``generation``: the sender then replays from the oldest row.

Retained status messages and snapshots are never stored (re-published fresh on every connect).
With ``mode: events_only`` per-frame detections bypass the outbox too.

Thread-safe: one connection (``check_same_thread=False``) behind one lock; no call made while
holding the lock ever calls back into the caller. One process at a time: an exclusive lock on
``outbox.sqlite3.lock`` keeps a second daemon on the same ``state_dir`` from double-sending.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedet.config import OutboxConfig
from edgedet.errors import ConfigError, PublishError
from edgedet.metrics import OUTBOX_DROP_REASONS, OUTBOX_KINDS, Metrics
from edgedet.outputs import outbox_db as db

log = logging.getLogger("edgedet.outbox")

FILENAME = "outbox.sqlite3"
#: Kinds (the ``MqttPublisher._send`` argument) that never go through the outbox.
_NEVER_STORED = frozenset({"status", "snapshot"})  # snapshots: retained latest picture, also on disk
# Age expiry needs an index scan; once a second is plenty (max_age_s is hours or days).
_EXPIRE_EVERY_S = 1.0
_SAVE_CLOCK_EVERY_S = 60.0
_VACUUM_FREE_PAGES = 256  # give space back once this many pages (1 MiB at 4 KiB) are free
_MEMORY_MAX_MESSAGES = 10_000
_MEMORY_MAX_MB = 32.0
_RETRY_MIN_S, _RETRY_MAX_S = 1.0, 30.0
_KEEP_PARKED = 100  # parked rows kept for inspection, newest


class OutboxError(PublishError):
    """The outbox cannot be used (closed, or even the memory store failed)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message; ``id`` rises with insertion order and is never reused."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # wall-clock epoch seconds (information only)
    kind: str = "other"


def open_outbox(
    state_dir: str | os.PathLike[str], cfg: OutboxConfig, metrics: Metrics
) -> Outbox | None:
    """The outbox at ``<state_dir>/outbox.sqlite3``, or None when ``cfg.enabled`` is false."""
    if not cfg.enabled:
        return None
    return Outbox.open(Path(state_dir) / FILENAME, cfg, metrics)


class Outbox:
    """A durable FIFO of MQTT messages. Create it with ``Outbox.open()`` / ``open_outbox()``."""

    def __init__(self, path: Path, cfg: OutboxConfig, metrics: Metrics, clock: db.AgeClock) -> None:
        self.path = path
        self.mode = cfg.mode
        self.max_messages = int(cfg.max_messages)
        self.max_age_s = float(cfg.max_age_s)
        self.max_bytes = int(float(cfg.max_mb) * 1024 * 1024)
        self.generation = 0  # +1 whenever the store is swapped (rotation, degrade, recovery)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._on_disk = False
        self._closed = False
        self._degraded: str | None = None  # why the store is in memory
        self._copied = False  # the memory store holds every row the disk file had
        self._retry_at = 0.0
        self._retry_s = _RETRY_MIN_S
        self._last_expiry = float("-inf")
        self._count = self._bytes = 0
        self._warned: set[str] = set()  # drop reasons already logged
        self._metrics = metrics
        self._dropped = {reason: metrics.outbox_dropped.labels(reason=reason) for reason in OUTBOX_DROP_REASONS}
        metrics.outbox_degraded.set(0)

    # ---------------------------------------------------------------- construction

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        cfg: OutboxConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        boot_id: Callable[[], str] | None = None,
    ) -> Outbox:
        """Open (creating it and its directory if needed) the outbox database at ``path``.

        ``clock`` is the age clock (default ``CLOCK_BOOTTIME``), ``wall`` the wall clock. Raises
        ConfigError only for what cannot heal by itself: a file in the way of ``state_dir``,
        another process holding the outbox, a file from a newer edgedet. A state dir that cannot
        be written starts the outbox in memory (degraded; the disk is retried).
        """
        age = db.AgeClock(clock, wall) if boot_id is None else db.AgeClock(clock, wall, boot_id)
        box = cls(Path(os.path.abspath(path)), cfg, metrics, age)
        with box._lock:
            try:
                box._use(box._open_disk(), on_disk=True)
            except db.Unwritable as exc:
                box._degrade(str(exc), copy=False)
            except BaseException:
                if box._lock_fd is not None:
                    os.close(box._lock_fd)
                raise
            box._expire(force=True)
            box._publish_count()
        if box._count:
            log.info("MQTT outbox %s holds %d unsent message(s); they go out once connected", box.path, box._count)
        return box

    # ---------------------------------------------------------------- policy

    def takes(self, kind: str, qos: int) -> bool:
        """Whether a message of this kind and QoS is stored (else it is sent directly)."""
        if qos <= 0 or kind in _NEVER_STORED:
            return False
        return self.mode == "all" or kind != "detections"

    # ---------------------------------------------------------------- operations

    def add(self, topic: str, payload: bytes | str, qos: int, retain: bool = False, kind: str = "other") -> int:
        """Store a message (committed on return); return its id. Makes room first (detections
        before events, oldest first). Raises OutboxError only when closed."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        size = len(data) + len(topic.encode())

        def insert(conn: sqlite3.Connection) -> int:
            with conn:
                dropped = self._make_room(conn, size)
                cur = conn.execute(
                    "INSERT INTO outbox (created, topic, payload, qos, retain, kind, born, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (self._clock.wall(), topic, data, int(qos), int(bool(retain)), kind, self._clock(), size),
                )
            for (reason, dkind), (n, nbytes) in dropped.items():
                self._count -= n
                self._bytes -= nbytes
                self._count_dropped(reason, dkind, n)
            self._count += 1
            self._bytes += size
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

        with self._lock:
            try:
                return self._do("store a message", insert)
            finally:
                self._publish_count()

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxMessage]:
        """Up to ``limit`` stored messages with id > ``after_id``, oldest first (expired ones removed)."""

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                f"SELECT {db.ROW_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit))
            ).fetchall()

        with self._lock:
            try:
                self._maintain()
                rows = self._do("read", read)
            finally:
                self._publish_count()
        return [OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def remove(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; unknown ids are ignored. Returns how many rows went."""
        wanted = [(int(i),) for i in ids]
        if not wanted:
            return 0

        def delete(conn: sqlite3.Connection) -> tuple[int, int]:
            with conn:
                marks = ",".join("?" * len(wanted))
                nbytes = conn.execute(f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",
                                      [w[0] for w in wanted]).fetchone()[0]
                before = conn.total_changes
                conn.executemany("DELETE FROM outbox WHERE id = ?", wanted)
                removed = conn.total_changes - before
            self._give_back(conn)
            return removed, int(nbytes)

        with self._lock:
            removed, nbytes = self._do("delete", delete)
            self._count -= removed
            self._bytes -= nbytes
            if self._count <= 0:
                self._count, self._bytes = max(self._count, 0), max(self._bytes, 0)
                self._warned.clear()  # the next outage logs its first drop again
            self._publish_count()
        return removed

    def park(self, row_id: int, reason: str) -> OutboxMessage | None:
        """Move a stored row to the ``parked`` table (never sent again); the row, None if unknown."""

        def move(conn: sqlite3.Connection) -> Any:
            with conn:
                row = conn.execute(f"SELECT {db.ROW_COLUMNS} FROM outbox WHERE id = ?", (int(row_id),)).fetchone()
                if row is not None:
                    conn.execute("INSERT OR REPLACE INTO parked VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (row[0], self._clock.wall(), reason, row[6], row[1], row[2], row[3], row[4]))
                    conn.execute("DELETE FROM outbox WHERE id = ?", (int(row_id),))
                    self._trim_parked(conn)
            return row

        with self._lock:
            r = self._do("park a message", move)
            if r is not None:
                self._count -= 1
                self._bytes -= int(r[8])
            self._publish_count()
        return None if r is None else OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6])

    def park_new(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str, reason: str) -> None:
        """Keep a message that can never be sent (too large) in ``parked`` for inspection."""

        def insert(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute("INSERT INTO parked (parked, reason, kind, topic, payload, qos, retain)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (self._clock.wall(), reason, kind, topic, payload, int(qos), int(retain)))
                self._trim_parked(conn)

        with self._lock:
            self._do("park a message", insert)

    def id_range(self) -> tuple[int, int] | None:
        """``(oldest id, newest id)`` of the stored messages, None when empty."""
        with self._lock:
            low, high = self._do("read", lambda c: c.execute("SELECT MIN(id), MAX(id) FROM outbox").fetchone())
        return None if low is None else (int(low), int(high))

    def maintain(self) -> None:
        """Periodic work (the sender thread calls it about once a second): age expiry, retrying the
        disk while degraded, saving the age clock, giving free pages back."""
        with self._lock:
            if self._conn is None:
                return
            self._maintain()
            self._publish_count()

    def state(self) -> dict[str, Any]:
        """For ``/healthz``: where the rows are and why."""
        with self._lock:
            return {"store": "disk" if self._on_disk else "memory", "degraded": self._degraded is not None,
                    "reason": self._degraded, "messages": self._count}

    @property
    def degraded(self) -> bool:
        return self._degraded is not None

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the database and release the process lock (idempotent). Rows stay on disk; rows
        held in memory (degraded) are lost, logged."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._degraded is not None and self._count:
                log.warning("MQTT outbox: %d message(s) held in memory are lost (%s)", self._count, self._degraded)
            conn, self._conn = self._conn, None
            try:
                if conn is not None and self._on_disk:
                    try:
                        with conn:
                            self._clock.save(conn)
                    except sqlite3.Error:
                        pass
                if conn is not None:
                    conn.close()
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals (lock held)

    def _do(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` on the current store; on a disk fault swap the store once and run it again."""
        if self._closed:
            raise OutboxError(f"the MQTT outbox {self.path} is closed")
        self._maybe_recover()
        assert self._conn is not None
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            if not self._on_disk:
                raise OutboxError(f"cannot {what} in the MQTT outbox (memory): {exc}") from None
            if db.is_corrupt(exc):
                self._rotate(exc)
            else:
                self._degrade(f"cannot {what} in {self.path}: {exc}", copy=True)
        assert self._conn is not None
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot {what} in the MQTT outbox: {exc}") from None

    def _open_disk(self) -> sqlite3.Connection:
        """A working connection to the file; Unwritable when the file system refuses."""
        db.prepare_dir(self.path.parent)
        if self._lock_fd is None:
            self._lock_fd = db.lock_file(self.path)
        try:
            conn = db.connect(self.path, self._clock, self.max_age_s)
        except db.NewerSchema as exc:
            raise ConfigError(f"state_dir: cannot open the MQTT outbox {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if not db.is_corrupt(exc) and "integrity check" not in str(exc):
                raise db.Unwritable(f"cannot open {self.path}: {exc}") from None
            conn = self._replace_damaged(exc)
        try:
            with conn:
                self._clock.save(conn)  # proves the file can be written
        except sqlite3.Error as exc:
            conn.close()
            raise db.Unwritable(f"cannot write {self.path}: {exc}") from None
        return conn

    def _replace_damaged(self, exc: BaseException) -> sqlite3.Connection:
        try:
            aside = db.move_aside(self.path)
            rows, lost = db.salvage(aside)
            conn = db.connect(self.path, self._clock, self.max_age_s)
        except (OSError, sqlite3.Error) as exc2:
            raise db.Unwritable(f"cannot replace the damaged {self.path}: {exc2}") from None
        now = self._clock()
        with conn:
            conn.executemany(f"INSERT INTO outbox ({db.ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [(*r[:7], min(float(r[7]), now), r[8]) for r in rows])  # type: ignore[arg-type]
        self._metrics.outbox_corrupt.inc()
        if lost:
            self._count_dropped("corrupt", "other", lost)
        log.error("MQTT outbox %s is unusable (%s); moved it to %s and started a new one with the %d readable "
                  "message(s) (%d unreadable)", self.path, exc, aside, len(rows), lost)
        return conn

    def _rotate(self, exc: BaseException) -> None:
        """A damaged page found while running: a new file with the readable rows."""
        assert self._conn is not None
        self._conn.close()
        self._conn = None
        try:
            self._use(self._replace_damaged(exc), on_disk=True)
        except db.Unwritable as exc2:
            self._degrade(str(exc2), copy=False)

    def _degrade(self, reason: str, *, copy: bool) -> None:
        rows: list[Any] = []
        copied = False
        old = self._conn
        if old is not None and copy:
            try:
                rows = old.execute(f"SELECT {db.ROW_COLUMNS} FROM outbox ORDER BY id").fetchall()
                copied = True
            except sqlite3.Error:
                rows = []
        if old is not None:
            old.close()
        mem = db.connect(":memory:", self._clock, self.max_age_s)
        with mem:
            high = max((int(r[0]) for r in rows), default=0)
            mem.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (high,))
            mem.executemany(f"INSERT INTO outbox ({db.ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._copied = copied
        self._degraded = reason
        self._retry_s = _RETRY_MIN_S
        self._retry_at = time.monotonic() + self._retry_s
        self._use(mem, on_disk=False)
        self._metrics.outbox_degraded.set(1)
        log.warning("MQTT outbox degraded to memory (at most %d messages, %.0f MiB; lost on a restart): %s; "
                    "retrying the disk in the background", _MEMORY_MAX_MESSAGES, _MEMORY_MAX_MB, reason)

    def _maybe_recover(self) -> None:
        if self._degraded is None or time.monotonic() < self._retry_at:
            return
        before = self._clock()
        conn: sqlite3.Connection | None = None
        try:
            conn = self._open_disk()
            shift = self._clock() - before  # loading the file's clock may move the age clock
            assert self._conn is not None
            rows = self._conn.execute(f"SELECT {db.ROW_COLUMNS} FROM outbox ORDER BY id").fetchall()
            with conn:
                if self._copied:  # the file's rows were copied to memory: memory is the truth
                    conn.execute("DELETE FROM outbox")
                    sql = f"INSERT OR REPLACE INTO outbox ({db.ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    conn.executemany(sql, [(*r[:7], float(r[7]) + shift, r[8]) for r in rows])
                else:
                    cols = db.ROW_COLUMNS.removeprefix("id, ")
                    conn.executemany(f"INSERT INTO outbox ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     [(*r[1:7], float(r[7]) + shift, r[8]) for r in rows])
        except (db.Unwritable, sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._retry_s
            log.debug("MQTT outbox: the disk still fails (%s); next try in %.0f s", exc, self._retry_s)
            return
        reason, self._degraded = self._degraded, None
        assert self._conn is not None
        self._conn.close()
        self._use(conn, on_disk=True)
        self._metrics.outbox_degraded.set(0)
        log.warning("MQTT outbox back on disk at %s (was: %s); %d message(s) moved from memory",
                    self.path, reason, len(rows))

    def _use(self, conn: sqlite3.Connection, *, on_disk: bool) -> None:
        self._conn = conn
        self._on_disk = on_disk
        self.generation += 1
        self._count, self._bytes = (int(v) for v in conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone())

    def _limits(self) -> tuple[int, int]:
        if self._on_disk:
            return self.max_messages, self.max_bytes
        return min(self.max_messages, _MEMORY_MAX_MESSAGES), min(self.max_bytes, int(_MEMORY_MAX_MB * 1024 * 1024))

    def _make_room(self, conn: sqlite3.Connection, size: int) -> dict[tuple[str, str], tuple[int, int]]:
        """Delete rows (detections first, then the rest; oldest first) so that one more row of
        ``size`` bytes fits; ``{(reason, kind): (rows, bytes)}``. Inside the caller's transaction."""
        max_n, max_b = self._limits()
        over_n, over_b = self._count + 1 - max_n, self._bytes + size - max_b
        dropped: dict[tuple[str, str], tuple[int, int]] = {}
        for where in ("kind = 'detections'", "kind != 'detections'"):
            last = 0
            while over_n > 0 or over_b > 0:
                batch = conn.execute(f"SELECT id, kind, size FROM outbox WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                                     (last, max(over_n, 64))).fetchall()
                if not batch:
                    break
                ids = []
                for row_id, kind, nbytes in batch:
                    if over_n <= 0 and over_b <= 0:
                        break
                    reason = "size" if over_n > 0 else "bytes"
                    n0, b0 = dropped.get((reason, kind), (0, 0))
                    dropped[(reason, kind)] = (n0 + 1, b0 + int(nbytes))
                    over_n, over_b = over_n - 1, over_b - int(nbytes)
                    ids.append((row_id,))
                    last = row_id
                conn.executemany("DELETE FROM outbox WHERE id = ?", ids)
        return dropped

    def _maintain(self) -> None:
        self._maybe_recover()
        self._expire()

    def _expire(self, force: bool = False) -> None:
        now = self._clock()
        if not force and abs(now - self._last_expiry) < _EXPIRE_EVERY_S:  # abs: an injected clock may step back
            return
        self._last_expiry = now

        def sweep(conn: sqlite3.Connection) -> list[Any]:
            with conn:
                cutoff = now - self.max_age_s
                rows = conn.execute("SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE born < ?"
                                    " GROUP BY kind", (cutoff,)).fetchall()
                if rows:
                    conn.execute("DELETE FROM outbox WHERE born < ?", (cutoff,))
                if self._on_disk:
                    self._clock.save(conn, _SAVE_CLOCK_EVERY_S)
            self._give_back(conn)
            return rows

        for kind, n, nbytes in self._do("expire old messages", sweep):
            self._count -= int(n)
            self._bytes -= int(nbytes)
            self._count_dropped("age", kind, int(n))

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """Return free pages to the file system once there are many (auto_vacuum=INCREMENTAL)."""
        if self._on_disk and int(conn.execute("PRAGMA freelist_count").fetchone()[0]) > _VACUUM_FREE_PAGES:
            conn.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page per call

    def _trim_parked(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM parked WHERE id NOT IN (SELECT id FROM parked ORDER BY id DESC LIMIT ?)",
                     (_KEEP_PARKED,))

    def _count_dropped(self, reason: str, kind: str, n: int) -> None:
        if n <= 0:
            return
        if reason not in self._warned and reason != "corrupt":  # once per reason until the outbox drains
            self._warned.add(reason)
            limit = {"size": f"max_messages={self._limits()[0]}", "bytes": f"max_mb={self._limits()[1] / 2**20:g}",
                     "age": f"max_age_s={self.max_age_s:g}"}[reason]
            log.warning("MQTT outbox: dropping the oldest messages (%s reached; per-frame detections go before "
                        "events); counted in edgedet_outbox_dropped_total", limit)
        self._dropped[reason].inc(n)
        label = kind if kind in OUTBOX_KINDS else "other"
        self._metrics.outbox_dropped_by_kind.labels(reason=reason, kind=label).inc(n)

    def _publish_count(self) -> None:
        self._metrics.outbox_messages.set(self._count)
