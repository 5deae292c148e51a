"""The outbox's SQLite file: schema and migration, the process lock, the integrity check, salvage of
readable rows from a damaged file, and the age clock that survives restarts and wall-clock jumps.

Used only by ``outbox.py`` (the policy: bounds, eviction order, degradation to memory).

Schema 2 (``PRAGMA user_version``)::

    outbox(id AUTOINCREMENT, created wall s, topic, payload, qos, retain, kind, born age-clock s, size bytes)
    parked(id, parked wall s, reason, kind, topic, payload, qos, retain)   -- set aside, never sent
    meta(key, value)                                                     -- the age clock

``auto_vacuum=INCREMENTAL``: freed pages are given back to the file system by
``PRAGMA incremental_vacuum`` (an older file is switched with one ``VACUUM`` at open).

The age clock (``AgeClock``): seconds that count while the box runs, never the wall clock. It is
``CLOCK_BOOTTIME`` (monotonic, counts suspend) plus an offset kept in ``meta``. Within one boot a
restart of the daemon keeps the offset, so downtime counts exactly. After a reboot the wall-clock
gap since the last save is added only when it is plausible (0 .. max_age_s); a wall clock that
jumped (NTP at boot on a box without an RTC, a wrong clock for days) adds nothing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from edgedet.errors import ConfigError

log = logging.getLogger("edgedet.outbox")

SCHEMA_VERSION = 2
ROW_COLUMNS = "id, topic, payload, qos, retain, created, kind, born, size"
#: SQLite primary result codes that mean "this file is damaged" (as opposed to "cannot write").
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_SALVAGE_CHUNK = 256


class NewerSchema(Exception):
    pass


class Unwritable(Exception):
    """The state dir or the file cannot be written (read-only, full, owned by another user)."""


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLite errors that mean a damaged file (not a read-only or full disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class AgeClock:
    """Seconds of box uptime, continued across restarts (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] | None = None, wall: Callable[[], float] = time.time,
                 boot_id: Callable[[], str] = _boot_id) -> None:
        self._clock = clock or _boottime
        self._wall = wall
        self._boot = boot_id()
        self._offset = 0.0
        self._saved_at = float("-inf")

    def __call__(self) -> float:
        return self._clock() + self._offset

    def wall(self) -> float:
        return self._wall()

    def load(self, conn: sqlite3.Connection, max_age_s: float) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        try:
            boot, offset = str(meta["boot"]), float(meta["offset"])
            age, wall = float(meta["age"]), float(meta["wall"])
        except (KeyError, TypeError, ValueError):
            return  # a new file (or schema 1): the clock starts at the boot clock
        if boot == self._boot:
            self._offset = offset
            return
        gap = self._wall() - wall
        if not 0.0 <= gap <= max_age_s:
            log.info("MQTT outbox: wall clock moved %+.0f s since the last run; not counted in message ages", gap)
            gap = 0.0
        self._offset = age + gap - self._clock()

    def save(self, conn: sqlite3.Connection, every_s: float = 0.0) -> None:
        """Persist the clock (at most every ``every_s`` s of age); the caller commits."""
        now = self()
        if now - self._saved_at < every_s and now >= self._saved_at:
            return
        self._saved_at = now
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("boot", self._boot), ("offset", self._offset), ("age", now), ("wall", self._wall())],
        )


# --------------------------------------------------------------------------- opening


def lock_file(path: Path) -> int:
    """An exclusive lock on ``<path>.lock``; ConfigError when another process holds it, Unwritable
    when it cannot be created."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise Unwritable(f"cannot create {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"state_dir: the MQTT outbox {path} is in use by another process "
            "(give each edgedet instance its own state_dir)"
        ) from None
    return fd


def prepare_dir(directory: Path) -> None:
    """Create the state dir. ConfigError when that can never work (a file in the way), Unwritable
    when the file system refuses (read-only, full, permissions: may heal)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = f"cannot create {directory} for the MQTT outbox: {exc.strerror or exc}"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise Unwritable(message) from None
        raise ConfigError(f"state_dir: {message}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise Unwritable(f"{directory} is not writable")


def connect(path: str | Path, clock: AgeClock, max_age_s: float) -> sqlite3.Connection:
    """Open (creating or migrating) an outbox database; ``":memory:"`` for the degraded mode.
    Raises sqlite3.DatabaseError (corrupt: see ``is_corrupt``), NewerSchema, other sqlite3 errors."""
    conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise NewerSchema(f"it was written by a newer edgedet (schema {version} > {SCHEMA_VERSION})")
        if str(path) != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")  # switches an existing file (once); cheap for a new one
        with conn:
            _create(conn)
            clock.load(conn, max_age_s)
            if version == 1:
                conn.execute(
                    "UPDATE outbox SET born = ?, size = length(payload) + length(topic),"
                    " kind = CASE WHEN topic LIKE '%/detections' THEN 'detections' ELSE 'events' END",
                    (clock(),),
                )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _create(conn: sqlite3.Connection) -> None:
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
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    for name, decl in (("kind", "TEXT NOT NULL DEFAULT 'other'"), ("born", "REAL NOT NULL DEFAULT 0"),
                       ("size", "INTEGER NOT NULL DEFAULT 0")):
        if name not in columns:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
    conn.execute("DROP INDEX IF EXISTS outbox_created")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_born ON outbox (born)")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS parked ("
        " id INTEGER PRIMARY KEY, parked REAL NOT NULL, reason TEXT NOT NULL, kind TEXT NOT NULL,"
        " topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")


# --------------------------------------------------------------------------- damaged files


def move_aside(path: Path) -> Path:
    """Rename the database (and its -wal/-shm) to ``<name>.corrupt-<epoch>``; the new name."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(aside.with_name(aside.name + suffix))
    return aside


def salvage(aside: Path) -> tuple[list[tuple[object, ...]], int]:
    """The rows still readable in a damaged outbox file (``ROW_COLUMNS`` order, id order) and the
    number of ids known to exist that could not be read. Never raises."""
    rows: list[tuple[object, ...]] = []
    try:
        conn = sqlite3.connect(f"file:{aside}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return rows, 0
    lost = 0
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        select = ROW_COLUMNS if "kind" in columns else \
            "id, topic, payload, qos, retain, created, 'other', 0, length(payload) + length(topic)"
        high = _max_id(conn)
        low = 0
        while low <= high:
            try:
                chunk = conn.execute(f"SELECT {select} FROM outbox WHERE id BETWEEN ? AND ? ORDER BY id",
                                     (low, low + _SALVAGE_CHUNK - 1)).fetchall()
            except sqlite3.Error:  # a damaged page in this range: one row at a time
                chunk = []
                for row_id in range(low, low + _SALVAGE_CHUNK):
                    try:
                        chunk.extend(conn.execute(f"SELECT {select} FROM outbox WHERE id = ?", (row_id,)))
                    except sqlite3.Error:
                        lost += 1
            rows.extend(chunk)
            low += _SALVAGE_CHUNK
    except sqlite3.Error:
        pass
    finally:
        conn.close()
    return rows, lost


def _max_id(conn: sqlite3.Connection) -> int:
    for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", "SELECT MAX(id) FROM outbox"):
        try:
            row = conn.execute(query).fetchone()
            if row and row[0] is not None:
                return int(row[0])
        except sqlite3.Error:
            continue
    return 0
