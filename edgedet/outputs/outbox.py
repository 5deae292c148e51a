"""On-disk outbox for QoS>=1 MQTT messages: nothing accepted is lost across a broker outage or a
``kill -9`` of the daemon.

SQLite in WAL mode (``synchronous=NORMAL``) at ``<state_dir>/outbox.sqlite3``. ``add()`` commits a
row before it returns, so a message accepted by ``MqttPublisher.publish()`` survives a crash of the
process (a power cut may lose the last commits: WAL + NORMAL syncs at checkpoints only). The
publisher removes a row once the broker has acknowledged it (PUBACK) and replays every remaining row,
in id (= insertion) order, after each (re)connect. Delivery is therefore at-least-once: a message
in flight when the connection drops is sent again, byte for byte, and consumers dedupe on
``(topic, seq, ts)``.

Bounds: at most ``max_messages`` rows and none older than ``max_age_s`` (wall clock: it survives
restarts); the oldest rows go first, counted in ``edgedet_outbox_dropped_total{reason="size"|"age"}``.
``edgedet_outbox_messages`` is the number of rows waiting.

Retained status messages (``online``/``offline``/camera status) are never stored: they are
re-published fresh on every connect, and a replayed old status must not overwrite a newer one.
With ``mode: events_only`` per-frame detections bypass the outbox too (paho keeps them in memory
only while the process lives); any other kind (events, snapshots) is stored.

Thread-safe: one connection (``check_same_thread=False``) behind one lock; no call made while
holding the lock ever calls back into the caller. One process at a time: an exclusive lock on
``outbox.sqlite3.lock`` keeps a second daemon on the same ``state_dir`` from double-sending.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edgedet.config import OutboxConfig
from edgedet.errors import ConfigError, PublishError
from edgedet.metrics import OUTBOX_DROP_REASONS, Metrics

log = logging.getLogger("edgedet.outbox")

FILENAME = "outbox.sqlite3"
#: Kinds (the ``MqttPublisher._send`` argument) that never go through the outbox.
_NEVER_STORED = frozenset({"status", "snapshot"})  # snapshots: retained latest picture, also on disk
_SCHEMA_VERSION = 1
# Age expiry needs an index scan; once a second is plenty (max_age_s is hours or days).
_EXPIRE_EVERY_S = 1.0


class OutboxError(PublishError):
    """The outbox database cannot be used (disk full, I/O error, closed)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message; ``id`` rises with insertion order and is never reused."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # wall-clock epoch seconds


def open_outbox(
    state_dir: str | os.PathLike[str], cfg: OutboxConfig, metrics: Metrics
) -> Outbox | None:
    """The outbox at ``<state_dir>/outbox.sqlite3``, or None when ``cfg.enabled`` is false."""
    if not cfg.enabled:
        return None
    return Outbox.open(Path(state_dir) / FILENAME, cfg, metrics)


class Outbox:
    """A durable FIFO of MQTT messages. Create it with ``Outbox.open()`` / ``open_outbox()``."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock_fd: int,
        path: Path,
        cfg: OutboxConfig,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.mode = cfg.mode
        self.max_messages = int(cfg.max_messages)
        self.max_age_s = float(cfg.max_age_s)
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.Lock()
        self._last_expiry = 0.0  # clock() of the last age sweep
        self._warned: set[str] = set()  # drop reasons already logged
        self._gauge = metrics.outbox_messages
        self._dropped = {reason: metrics.outbox_dropped.labels(reason=reason) for reason in OUTBOX_DROP_REASONS}
        row = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        self._count = int(row[0])
        with self._lock:
            self._expire_locked(force=True)
            self._publish_count()

    # ---------------------------------------------------------------- construction

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        cfg: OutboxConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open (creating it and its directory if needed) the outbox database at ``path``.

        Raises ConfigError naming ``state_dir`` when the directory cannot be written or another
        process holds the outbox. A file that is not a usable SQLite database is moved aside
        (``<name>.corrupt-<epoch>``, logged as an ERROR) and a fresh outbox is started, so a
        damaged SD card never keeps the daemon from starting.
        """
        path = Path(os.path.abspath(path))
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"state_dir: cannot create {directory} for the MQTT outbox: {exc.strerror or exc}"
            ) from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"state_dir: {directory} is not writable (needed for the MQTT outbox)")
        lock_fd = _lock_file(path)
        try:
            conn = _connect(path)
        except (sqlite3.OperationalError, _NewerSchema) as exc:  # permissions, disk full, newer schema
            os.close(lock_fd)
            raise ConfigError(f"state_dir: cannot open the MQTT outbox {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database / malformed
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("MQTT outbox %s is unusable (%s); moved it to %s and starting empty", path, exc, aside)
            try:
                for suffix in ("", "-wal", "-shm"):
                    src = path.with_name(path.name + suffix)
                    if src.exists():
                        src.replace(aside.with_name(aside.name + suffix))
                conn = _connect(path)
            except (OSError, sqlite3.Error) as exc2:
                os.close(lock_fd)
                raise ConfigError(f"state_dir: cannot recreate the MQTT outbox {path}: {exc2}") from None
        try:
            box = cls(conn, lock_fd, path, cfg, metrics, clock)
        except sqlite3.Error as exc:
            conn.close()
            os.close(lock_fd)
            raise ConfigError(f"state_dir: cannot read the MQTT outbox {path}: {exc}") from None
        if len(box):
            log.info("MQTT outbox %s holds %d unsent message(s); they go out once connected", path, len(box))
        return box

    # ---------------------------------------------------------------- policy

    def takes(self, kind: str, qos: int) -> bool:
        """Whether a message of this kind and QoS is stored (else it is sent directly)."""
        if qos <= 0 or kind in _NEVER_STORED:
            return False
        return self.mode == "all" or kind != "detections"

    # ---------------------------------------------------------------- operations

    def add(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> int:
        """Store a message durably (committed on return); return its id. Drops the oldest rows
        beyond ``max_messages``. Raises OutboxError when the database cannot be written."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        with self._lock:
            conn = self._require_conn()
            try:
                with conn:
                    cur = conn.execute(
                        "INSERT INTO outbox (created, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                        (self._clock(), topic, data, int(qos), int(bool(retain))),
                    )
                    excess = self._count + 1 - self.max_messages
                    deleted = 0
                    if excess > 0:
                        deleted = conn.execute(
                            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                            (excess,),
                        ).rowcount
                row_id = cur.lastrowid
                self._count += 1 - deleted
                self._count_dropped("size", deleted)
                self._expire_locked()
            except sqlite3.Error as exc:
                self._count = self._recount()
                raise OutboxError(f"cannot store an MQTT message in {self.path}: {exc}") from None
            finally:
                self._publish_count()
        assert row_id is not None
        return row_id

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxMessage]:
        """Up to ``limit`` stored messages with id > ``after_id``, oldest first (expired ones removed)."""
        with self._lock:
            conn = self._require_conn()
            try:
                self._expire_locked()
                rows = conn.execute(
                    "SELECT id, topic, payload, qos, retain, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (int(after_id), int(limit)),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the MQTT outbox {self.path}: {exc}") from None
            finally:
                self._publish_count()
        return [OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def remove(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; unknown ids are ignored. Returns how many rows went."""
        wanted = [(int(i),) for i in ids]
        if not wanted:
            return 0
        with self._lock:
            conn = self._require_conn()
            try:
                with conn:
                    before = conn.total_changes
                    conn.executemany("DELETE FROM outbox WHERE id = ?", wanted)
                    removed = conn.total_changes - before
            except sqlite3.Error as exc:
                self._count = self._recount()
                raise OutboxError(f"cannot delete from the MQTT outbox {self.path}: {exc}") from None
            self._count -= removed
            if self._count == 0:
                self._warned.clear()  # the next outage logs its first drop again
            self._publish_count()
        return removed

    def id_range(self) -> tuple[int, int] | None:
        """``(oldest id, newest id)`` of the stored messages, None when empty."""
        with self._lock:
            conn = self._require_conn()
            try:
                low, high = conn.execute("SELECT MIN(id), MAX(id) FROM outbox").fetchone()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the MQTT outbox {self.path}: {exc}") from None
        return None if low is None else (int(low), int(high))

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the database and release the process lock (idempotent). Rows stay on disk."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.close()
            finally:
                os.close(self._lock_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals (lock held)

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"the MQTT outbox {self.path} is closed")
        return self._conn

    def _expire_locked(self, force: bool = False) -> None:
        now = self._clock()
        if not force and abs(now - self._last_expiry) < _EXPIRE_EVERY_S:  # abs: the clock may step back
            return
        self._last_expiry = now
        conn = self._require_conn()
        with conn:
            deleted = conn.execute("DELETE FROM outbox WHERE created < ?", (now - self.max_age_s,)).rowcount
        if deleted > 0:
            self._count -= deleted
            self._count_dropped("age", deleted)

    def _count_dropped(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        if reason not in self._warned:  # once per reason until the outbox drains: no log flood
            self._warned.add(reason)
            limit = f"max_messages={self.max_messages}" if reason == "size" else f"max_age_s={self.max_age_s:g}"
            log.warning("MQTT outbox: dropping the oldest messages (%s reached); counted in "
                        "edgedet_outbox_dropped_total", limit)
        self._dropped[reason].inc(n)

    def _recount(self) -> int:
        try:
            return int(self._require_conn().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error:
            return self._count

    def _publish_count(self) -> None:
        self._gauge.set(self._count)


def _lock_file(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"state_dir: cannot create {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"state_dir: the MQTT outbox {path} is in use by another process "
            "(give each edgedet instance its own state_dir)"
        ) from None
    return fd


class _NewerSchema(Exception):
    pass


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=NORMAL")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise _NewerSchema(f"it was written by a newer edgedet (schema {version} > {_SCHEMA_VERSION})")
        with conn:
            # AUTOINCREMENT: ids are never reused, so "id > last sent" never skips a new row.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " created REAL NOT NULL,"
                " topic TEXT NOT NULL,"
                " payload BLOB NOT NULL,"
                " qos INTEGER NOT NULL,"
                " retain INTEGER NOT NULL)"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created)")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn
