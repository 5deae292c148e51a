"""Outbox faults on real files (issue 10, items 3-5): pages overwritten with ``dd``, eviction order
and the byte cap, space given back, and expiry that ignores wall-clock jumps (a faked clock)."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import OutboxConfig, parse_config
from edgedet.errors import ConfigError
from edgedet.metrics import Metrics
from edgedet.outputs.outbox import FILENAME, Outbox

DAY = 24 * 3600.0
YEAR = 365 * DAY


class Clock:
    """An injected clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / FILENAME


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def drain_topics(box: Outbox) -> list[str]:
    out: list[str] = []
    after = 0
    while rows := box.pending(after, 500):
        out += [r.topic for r in rows]
        after = rows[-1].id
    return out


def dd_pages(path: Path, first_page: int, count: int) -> None:
    """Overwrite ``count`` 4 KiB pages of ``path`` with random bytes, in place (a bad SD card)."""
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=4096", f"seek={first_page}", f"count={count}",
                    "conv=notrunc"], check=True, capture_output=True, timeout=30)


def checkpoint(path: Path) -> None:
    other = sqlite3.connect(path)
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        other.close()


# --------------------------------------------------------------------------- item 3: damaged pages


def test_pages_damaged_while_running_move_the_file_aside_and_keep_the_readable_rows(
    path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    # 7 MB: more than SQLite's 2 MiB page cache, so the sender's reads hit the damaged pages.
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        for i in range(5000):
            box.add(f"cam/events/{i}", os.urandom(1000), 1, kind="events")
        checkpoint(path)
        dd_pages(path, 40, 3)
        topics = drain_topics(box)  # no exception: the damage is handled inside
        lost = 5000 - len(topics)
        assert 0 < lost <= 12, lost  # 3 pages of ~4 rows each
        assert topics == sorted(topics, key=lambda t: int(t.rsplit("/", 1)[1]))  # order kept
        assert len(box) == len(topics)
        box.add("cam/events/new", b"after the damage", 1, kind="events")  # delivery of new messages goes on
        assert drain_topics(box)[-1] == "cam/events/new"
    assert sample(metrics, "edgedet_outbox_corrupt_total") == 1.0
    assert sample(metrics, "edgedet_outbox_dropped_total", reason="corrupt") == float(lost)
    aside = [p.name for p in path.parent.iterdir() if p.name.startswith(FILENAME + ".corrupt-")]
    assert aside and all("-wal" in n or "-shm" in n or n.split("-")[-1].isdigit() for n in aside)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "unusable" in r.getMessage()]
    assert len(errors) == 1, "logged once"
    assert f"{len(topics)} readable message(s) ({lost} unreadable)" in errors[0].getMessage()
    with Outbox.open(path, OutboxConfig(), Metrics(CollectorRegistry())) as box:  # the new file is sound
        assert len(box) == len(topics) + 1


def test_damage_found_by_the_integrity_check_at_open(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), Metrics(CollectorRegistry())) as box:
        for i in range(400):
            box.add(f"t/{i}", os.urandom(1000), 1, kind="events")
    checkpoint(path)
    dd_pages(path, 20, 2)
    with Outbox.open(path, OutboxConfig(), metrics) as box:  # quick_check fails: a new file at once
        n = len(box)
        assert 390 <= n < 400
        assert len(drain_topics(box)) == n
    assert sample(metrics, "edgedet_outbox_corrupt_total") == 1.0


# --------------------------------------------------------------------------- item 4: eviction, bytes


def test_events_are_never_evicted_while_detections_remain(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(max_messages=100), metrics) as box:
        box.add("cam/events", b"alarm 0", 1, kind="events")
        for i in range(150):
            box.add("cam/detections", f"frame {i}".encode(), 1, kind="detections")
            if i % 50 == 0:
                box.add("cam/events", f"alarm {i // 50 + 1}".encode(), 1, kind="events")
        rows = box.pending(limit=1000)
        events = [r.payload for r in rows if r.kind == "events"]
        assert events == [b"alarm 0", b"alarm 1", b"alarm 2", b"alarm 3"]
        assert len(rows) == 100
        assert sample(metrics, "edgedet_outbox_dropped_by_kind_total", reason="size", kind="detections") == 54.0
        assert sample(metrics, "edgedet_outbox_dropped_by_kind_total", reason="size", kind="events") == 0.0
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="size") == 54.0  # the old series
        for i in range(200):  # only events now: the oldest events go, at last
            box.add("cam/events", f"late {i}".encode(), 1, kind="events")
        assert len(box) == 100
        assert (sample(metrics, "edgedet_outbox_dropped_by_kind_total", reason="size", kind="events") or 0) > 0


def test_byte_cap_and_the_file_gives_space_back(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(max_mb=2), metrics) as box:
        for _ in range(600):  # 6 MB offered, 2 MiB kept
            box.add("cam/detections", os.urandom(10_000), 1, kind="detections")
        total = sum(len(r.payload) + len(r.topic) for r in box.pending(limit=1000))
        assert 1.9 * 2**20 < total <= 2 * 2**20
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="bytes") == float(600 - len(box))
        checkpoint(path)
        full = path.stat().st_size
        box.remove(r.id for r in box.pending(limit=1000))
        box.maintain()  # incremental_vacuum
        checkpoint(path)
        assert path.stat().st_size < full / 4, (full, path.stat().st_size)


def test_a_schema_1_file_is_migrated_and_switched_to_incremental_vacuum(path: Path, metrics: Metrics) -> None:
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL);"
        "CREATE INDEX outbox_created ON outbox (created);"
        "INSERT INTO outbox (created, topic, payload, qos, retain) VALUES (1.0, 'e/n/gate/detections', x'00', 1, 0);"
        "INSERT INTO outbox (created, topic, payload, qos, retain) VALUES (1.0, 'e/n/gate/events', x'01', 1, 0);"
        "PRAGMA user_version=1;"
    )
    old.close()
    with Outbox.open(path, OutboxConfig(max_age_s=60.0), metrics) as box:  # created=1.0 is 1970: not expired
        assert [(r.topic, r.kind) for r in box.pending()] == [
            ("e/n/gate/detections", "detections"), ("e/n/gate/events", "events")]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    assert check.execute("PRAGMA user_version").fetchone() == (2,)
    check.close()


# --------------------------------------------------------------------------- item 5: clock jumps


@pytest.mark.parametrize("jump", [YEAR, -YEAR])
def test_a_wall_clock_jump_while_running_neither_expires_nor_keeps(path: Path, metrics: Metrics, jump: float) -> None:
    age, wall = Clock(1000.0), Clock(1_700_000_000.0)
    with Outbox.open(path, OutboxConfig(max_age_s=DAY), metrics, clock=age, wall=wall, boot_id=lambda: "b1") as box:
        box.add("t", b"x", 1)
        wall.now += jump  # NTP at boot, or a wrong clock put right
        age.now += 2
        assert len(box.pending()) == 1
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 0.0
        age.now += DAY  # a real day of uptime later it does expire
        assert box.pending() == []
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 1.0


@pytest.mark.parametrize(("wall_gap", "counted"), [(YEAR, 0.0), (-YEAR, 0.0), (2 * DAY, 0.0), (3600.0, 3600.0)])
def test_a_reboot_counts_the_downtime_only_when_the_wall_clock_is_plausible(
    path: Path, wall_gap: float, counted: float
) -> None:
    """After a reboot only a wall-clock gap of 0 .. max_age_s counts as downtime: anything else is
    a clock that jumped (the boot clock cannot tell), so the row keeps the age it had."""
    age, wall = Clock(5000.0), Clock(1_700_000_000.0)
    cfg = OutboxConfig(max_age_s=DAY)
    with Outbox.open(path, cfg, Metrics(CollectorRegistry()), clock=age, wall=wall, boot_id=lambda: "b1") as box:
        box.add("t", b"x", 1)
    age.now = 30.0  # a new boot: the boot clock starts again
    wall.now += wall_gap
    with Outbox.open(path, cfg, Metrics(CollectorRegistry()), clock=age, wall=wall, boot_id=lambda: "b2") as box:
        assert len(box) == 1
        age.now += DAY - counted - 10
        assert len(box.pending()) == 1
        age.now += 20
        assert box.pending() == []


def test_a_restart_within_one_boot_counts_the_downtime_exactly(path: Path) -> None:
    age, wall = Clock(5000.0), Clock(1_700_000_000.0)
    cfg = OutboxConfig(max_age_s=DAY)
    with Outbox.open(path, cfg, Metrics(CollectorRegistry()), clock=age, wall=wall, boot_id=lambda: "b1") as box:
        box.add("t", b"x", 1)
    age.now += DAY - 60
    wall.now -= YEAR  # whatever the wall clock says
    with Outbox.open(path, cfg, Metrics(CollectorRegistry()), clock=age, wall=wall, boot_id=lambda: "b1") as box:
        assert len(box) == 1
        age.now += 120
        assert box.pending() == []


# --------------------------------------------------------------------------- config keys


BASE = "cameras:\n  gate:\n    url: rtsp://cam.local/x\nmodel:\n  path: m.torchscript\n"


def test_new_config_keys_and_their_defaults() -> None:
    cfg = parse_config(BASE, check_files=False)
    assert (cfg.outbox.max_mb, cfg.mqtt.max_payload_bytes) == (200.0, 256 * 1024)
    cfg = parse_config(BASE + "outbox: {max_mb: 50}\nmqtt: {max_payload_bytes: 131072}\n", check_files=False)
    assert (cfg.outbox.max_mb, cfg.mqtt.max_payload_bytes) == (50.0, 131072)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("outbox: {max_mb: 0.5}", "outbox.max_mb: must be >= 1 (got 0.5)"),
        ("mqtt: {max_payload_bytes: 100}", "mqtt.max_payload_bytes: must be between 1024 and 268435455 (got 100)"),
    ],
)
def test_new_config_key_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + line + "\n", "config.yaml", check_files=False)
    assert info.value.problems == [f"config.yaml:6: {message}"]
