"""Tests for edgedet.outputs.outbox: order, acks, bounds (count, age with an injected clock), crash safety,
process lock, corrupt files, metrics, and the ``outbox`` config section."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import OutboxConfig, parse_config
from edgedet.errors import ConfigError
from edgedet.metrics import Metrics
from edgedet.outputs.outbox import FILENAME, Outbox, OutboxError, open_outbox

REPO = Path(__file__).resolve().parents[2]
DAY = 24 * 3600.0


class Clock:
    """An injected wall clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / FILENAME


def topics(box: Outbox, after: int = 0, limit: int = 1000) -> list[str]:
    return [m.topic for m in box.pending(after, limit)]


# --------------------------------------------------------------------------- store / ack / replay


def test_messages_come_back_in_insertion_order_and_go_once_acknowledged(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        ids = [box.add(f"t/{i}", f"payload {i}", 1) for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        first = box.pending(limit=2)
        assert [(m.id, m.topic, m.payload, m.qos, m.retain) for m in first] == [
            (ids[0], "t/0", b"payload 0", 1, False),
            (ids[1], "t/1", b"payload 1", 1, False),
        ]
        assert topics(box, after=ids[1]) == ["t/2", "t/3", "t/4"]  # the next window of a replay

        assert box.remove([ids[0], ids[2], 999_999]) == 2  # unknown ids are ignored
        assert box.remove([ids[0]]) == 0  # a duplicate PUBACK
        assert topics(box) == ["t/1", "t/3", "t/4"]
        assert len(box) == 3


def test_ids_are_never_reused_after_the_outbox_empties(path: Path, metrics: Metrics) -> None:
    # The sender resumes with "id > last sent": a reused id would be skipped until the next reconnect.
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        last = box.add("t", b"x", 1)
        box.remove([last])
        assert len(box) == 0
        assert box.add("t", b"y", 1) > last
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        assert box.add("t", b"z", 1) > last + 1


def test_payload_bytes_and_flags_round_trip(path: Path, metrics: Metrics) -> None:
    payload = bytes(range(256)) * 10
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        box.add("a/b", payload, 2, retain=True)
        (msg,) = box.pending()
        assert (msg.payload, msg.qos, msg.retain) == (payload, 2, True)


@pytest.mark.parametrize(
    ("mode", "kind", "qos", "stored"),
    [
        ("all", "detections", 1, True),
        ("all", "events", 1, True),
        ("all", "snapshot", 2, False),
        ("all", "other", 1, True),
        ("all", "status", 1, False),  # retained availability: re-published fresh on connect instead
        ("all", "detections", 0, False),  # QoS 0 is fire-and-forget
        ("events_only", "detections", 1, False),
        ("events_only", "events", 1, True),
        ("events_only", "snapshot", 1, False),
        ("events_only", "status", 1, False),
        ("events_only", "events", 0, False),
    ],
)
def test_which_messages_are_stored(path: Path, mode: str, kind: str, qos: int, stored: bool, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(mode=mode), metrics) as box:
        assert box.takes(kind, qos) is stored


# --------------------------------------------------------------------------- bounds


def test_count_bound_drops_the_oldest(path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox.open(path, OutboxConfig(max_messages=100), metrics) as box:
        for i in range(130):
            box.add("t", str(i), 1)
        assert len(box) == 100
        assert [m.payload for m in box.pending(limit=2)] == [b"30", b"31"]
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="size") == 30.0
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 0.0
        assert sample(metrics, "edgedet_outbox_messages") == 100.0
    drops = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(drops) == 1, "one line when dropping starts, not one per message"
    assert "max_messages=100" in drops[0].getMessage()


def test_age_bound_with_an_injected_clock(path: Path, metrics: Metrics) -> None:
    clock = Clock()
    with Outbox.open(path, OutboxConfig(max_age_s=60.0), metrics, clock=clock) as box:
        box.add("t", b"old", 1)
        clock.now += 30
        box.add("t", b"middle", 1)
        clock.now += 40  # "old" is 70 s old now, "middle" 40 s
        assert [m.payload for m in box.pending()] == [b"middle"]
        assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 1.0
        assert sample(metrics, "edgedet_outbox_messages") == 1.0

        clock.now -= 3600  # the clock steps back (NTP): nothing is dropped for being "in the future"
        box.add("t", b"new", 1)
        assert [m.payload for m in box.pending()] == [b"middle", b"new"]


def test_expired_rows_are_dropped_when_the_outbox_is_reopened(path: Path, metrics: Metrics) -> None:
    clock = Clock()
    with Outbox.open(path, OutboxConfig(max_age_s=DAY), Metrics(CollectorRegistry()), clock=clock) as box:
        box.add("t", b"x", 1)
    clock.now += 2 * DAY
    with Outbox.open(path, OutboxConfig(max_age_s=DAY), metrics, clock=clock) as box:
        assert len(box) == 0
    assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 1.0


# --------------------------------------------------------------------------- crash safety


def test_messages_survive_kill_9_without_close(path: Path, metrics: Metrics) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal
        from edgedet.outputs.outbox import Outbox
        from prometheus_client import CollectorRegistry
        from edgedet.config import OutboxConfig
        from edgedet.metrics import Metrics
        cfg = OutboxConfig(max_messages=1000, max_age_s=3600.0)
        box = Outbox.open({str(path)!r}, cfg, Metrics(CollectorRegistry()))
        ids = [box.add("cam/gate/events", f"seq {{i}}", 1) for i in range(50)]
        box.remove(ids[:10])  # acknowledged before the crash
        print("stored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no checkpoint, no atexit
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout == "stored\n"

    with Outbox.open(path, OutboxConfig(), metrics) as box:  # the process lock died with the process
        assert [m.payload for m in box.pending(limit=100)] == [f"seq {i}".encode() for i in range(10, 50)]


def test_a_second_connection_sees_every_committed_message(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        box.add("t", b"one", 1)
        box.add("t", b"two", 1)
        other = sqlite3.connect(path)  # e.g. an operator's sqlite3 shell while the daemon runs
        try:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute("SELECT payload FROM outbox ORDER BY id").fetchall() == [(b"one",), (b"two",)]
        finally:
            other.close()


def test_one_process_per_outbox(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), metrics):
        with pytest.raises(ConfigError) as info:
            Outbox.open(path, OutboxConfig(), metrics)
    (line,) = info.value.problems
    assert line.startswith("state_dir: the MQTT outbox ") and "in use by another process" in line
    Outbox.open(path, OutboxConfig(), metrics).close()  # free again once closed


def test_a_corrupt_file_is_moved_aside(path: Path, caplog: pytest.LogCaptureFixture, metrics: Metrics) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite database" * 100)
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        box.add("t", b"x", 1)
        assert len(box) == 1
    aside = [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(FILENAME + ".corrupt-")
    assert any(r.levelno == logging.ERROR and "unusable" in r.getMessage() for r in caplog.records)


def test_state_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path, metrics: Metrics) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        open_outbox(blocker / "state", OutboxConfig(), metrics)
    (line,) = info.value.problems
    assert line.startswith(f"state_dir: cannot create {blocker / 'state'} for the MQTT outbox: ")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_state_dir_degrades_to_memory(tmp_path: Path, metrics: Metrics) -> None:
    # Issue 10 item 2 changed this from a ConfigError (exit 2): the daemon keeps running.
    state = tmp_path / "ro"
    state.mkdir(mode=0o555)
    box = open_outbox(state, OutboxConfig(), metrics)
    assert box is not None
    with box:
        assert box.degraded and box.state()["store"] == "memory"
        box.add("t", b"x", 1)
        assert len(box) == 1
    assert sample(metrics, "edgedet_outbox_degraded") == 1.0


def test_open_outbox_uses_the_state_dir_and_honours_enabled(tmp_path: Path, metrics: Metrics) -> None:
    assert open_outbox(tmp_path, OutboxConfig(enabled=False), metrics) is None
    assert not (tmp_path / FILENAME).exists()
    box = open_outbox(tmp_path, OutboxConfig(), metrics)
    assert box is not None
    with box:
        assert box.path == tmp_path / FILENAME


def test_closed_outbox_raises_outbox_error(path: Path, metrics: Metrics) -> None:
    box = Outbox.open(path, OutboxConfig(), metrics)
    box.close()
    box.close()  # idempotent
    assert box.closed
    with pytest.raises(OutboxError, match="closed"):
        box.add("t", b"x", 1)


# --------------------------------------------------------------------------- metrics, threads


def test_metrics_start_at_zero_and_follow_the_outbox(path: Path, metrics: Metrics) -> None:
    assert sample(metrics, "edgedet_outbox_dropped_total", reason="size") == 0.0
    assert sample(metrics, "edgedet_outbox_dropped_total", reason="age") == 0.0
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        assert sample(metrics, "edgedet_outbox_messages") == 0.0
        ids = [box.add("t", b"x", 1) for _ in range(3)]
        assert sample(metrics, "edgedet_outbox_messages") == 3.0
        box.remove(ids[:2])
        assert sample(metrics, "edgedet_outbox_messages") == 1.0
    with Outbox.open(path, OutboxConfig(), Metrics(CollectorRegistry())) as box:
        assert len(box) == 1  # the gauge of a new run starts from what is on disk


def test_concurrent_writers_and_an_acker(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        def writer(n: int) -> None:
            for i in range(200):
                box.add(f"cam{n}", str(i), 1)

        threads = [threading.Thread(target=writer, args=(n,), name=f"writer:{n}") for n in range(4)]
        for t in threads:
            t.start()
        removed = 0
        while any(t.is_alive() for t in threads) or len(box):
            removed += box.remove(m.id for m in box.pending(limit=50))
        for t in threads:
            t.join()
        assert (removed, len(box)) == (800, 0)


# --------------------------------------------------------------------------- config


BASE = "cameras:\n  gate:\n    url: rtsp://cam.local/x\nmodel:\n  path: m.torchscript\n"


def test_outbox_config_defaults() -> None:
    cfg = parse_config(BASE, check_files=False)
    assert cfg.outbox == OutboxConfig()
    assert (cfg.outbox.enabled, cfg.outbox.mode, cfg.outbox.max_messages, cfg.outbox.max_age_s) == (
        True, "all", 100_000, 7 * DAY)


def test_outbox_config_values() -> None:
    text = BASE + "outbox:\n  enabled: false\n  mode: events_only\n  max_messages: 500\n  max_age_s: 3600\n"
    out = parse_config(text, check_files=False).outbox
    assert (out.enabled, out.mode, out.max_messages, out.max_age_s) == (False, "events_only", 500, 3600.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("outbox: {max_messages: 99}", "outbox.max_messages: must be >= 100 (got 99)"),
        ("outbox: {max_age_s: 0}", "outbox.max_age_s: must be > 0 (got 0.0)"),
        ("outbox: {mode: events}", "outbox.mode: expected one of 'all', 'events_only' (got 'events')"),
        ("outbox: {max_mesages: 500}", "outbox.max_mesages: unknown key 'max_mesages' (did you mean 'max_messages'?)"),
    ],
)
def test_outbox_config_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + line + "\n", "config.yaml", check_files=False)
    assert info.value.problems == [f"config.yaml:6: {message}"]


def test_id_range(path: Path, metrics: Metrics) -> None:
    with Outbox.open(path, OutboxConfig(), metrics) as box:
        assert box.id_range() is None
        ids = [box.add("t", b"x", 1) for _ in range(3)]
        box.remove(ids[:1])
        assert box.id_range() == (ids[1], ids[2])
