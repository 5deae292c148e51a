"""State-dir faults for real (issue 10, items 2 and 3): a tmpfs state dir that is read-only or full
(the outbox degrades to memory, says so in the log, /metrics and /healthz, keeps delivering, and
moves back to disk by itself once the file system is fixed; root only: mount), and outbox pages
overwritten with ``dd`` while the publisher delivers the backlog to a real broker."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import MqttConfig, OutboxConfig
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.outbox import FILENAME, Outbox, open_outbox
from tests.brokers import healthz, stop_cleanly, wait_log_line
from tests.helpers import MosquittoBroker, MqttSubscriber, metrics_text, parse_metric, wait_for

pytestmark = pytest.mark.integration


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``make(size) -> <tmp_path>/state`` as a fresh tmpfs of that size; unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs state dir needs root (CI runs as root)")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(state))
        mounted.append(state)
        return state

    yield make
    for state in mounted:
        subprocess.run(["umount", "-l", str(state)], check=False, capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte (dd until ENOSPC)."""
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, timeout=60)
    return filler


def test_a_full_disk_degrades_to_memory_and_recovers_by_itself(tmpfs: Callable[[str], Path]) -> None:
    state = tmpfs("4m")
    metrics = Metrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    with Outbox.open(state / FILENAME, OutboxConfig(), metrics) as box:
        for i in range(10):
            box.add("cam/events", f"before {i}".encode(), 1, kind="events")
        filler = fill(state)
        generation = box.generation
        added = 0
        while not box.degraded:  # the first write that finds no space degrades the outbox
            box.add("cam/events", os.urandom(20_000), 1, kind="events")
            added += 1
            assert added < 400, "the disk never filled"
        assert box.generation > generation and value("edgedet_outbox_degraded") == 1.0
        assert box.state()["store"] == "memory" and "full" in str(box.state()["reason"])
        for i in range(50):
            box.add("cam/events", f"during {i}".encode(), 1, kind="events")
        held = len(box)
        assert held == 10 + added + 50  # nothing accepted was lost in the switch
        box.maintain()
        assert box.degraded  # still full: stays in memory, retries later
        filler.unlink()
        def back_on_disk() -> bool:
            box.maintain()
            return not box.degraded

        wait_for(back_on_disk, 20, "the outbox to move back to disk")
        assert value("edgedet_outbox_degraded") == 0.0 and len(box) == held
    with Outbox.open(state / FILENAME, OutboxConfig(), Metrics(CollectorRegistry())) as again:
        payloads = [m.payload for m in again.pending(limit=1000)]
    assert len(payloads) == held
    assert payloads[:10] == [f"before {i}".encode() for i in range(10)]
    assert payloads[-50:] == [f"during {i}".encode() for i in range(50)]


def test_the_daemon_keeps_publishing_on_a_read_only_state_dir_and_moves_back_to_disk(
    tmpfs: Callable[[str], Path], start_daemon: Callable[..., Any], assets: Any
) -> None:
    state = tmpfs("16m")
    mount("-o", "remount,ro", str(state))  # e.g. ext4 errors=remount-ro after SD card trouble
    proc, sub, port = start_daemon({"gate": {"url": str(assets.clip), "loop": True}})
    sub.wait_message("edgedet/testnode/gate/detections", timeout=120)  # still publishing, no exit 2
    text = metrics_text(port)
    assert parse_metric(text, "edgedet_outbox_degraded") == 1.0
    code, body = healthz(port)
    assert body["outbox"]["degraded"] is True and body["outbox"]["store"] == "memory", body
    assert code == 200, body  # degraded is reported, not unhealthy: messages still flow
    wait_log_line(proc, lambda ln: "degraded to memory" in ln and "WARNING" in ln, "the degraded warning")
    assert not (state / FILENAME).exists()

    mount("-o", "remount,rw", str(state))
    fixed = time.monotonic()
    wait_for(lambda: parse_metric(metrics_text(port), "edgedet_outbox_degraded") == 0.0, 60,
             "the outbox to move back to disk (retry backoff at most 30 s)")
    wait_log_line(proc, lambda ln: "back on disk" in ln, "the recovery line")
    back_s = time.monotonic() - fixed
    assert (state / FILENAME).exists()
    assert healthz(port)[1]["outbox"]["store"] == "disk"
    before = len(sub.messages("edgedet/testnode/gate/detections"))
    sub.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/detections")]) > before + 5, 60,
                 "detections after the recovery")
    assert proc.stderr_text().count("degraded to memory") == 1, "said once"
    print(f"read-only state dir: published while degraded; back on disk {back_s:.1f} s after remount rw")
    stop_cleanly(proc)


def test_pages_damaged_under_a_running_publisher_do_not_stop_delivery(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Callable[..., MqttSubscriber], tmp_path: Path
) -> None:
    mosquitto = mosquitto_factory(extra_lines=["max_queued_messages 100000"])  # the default 1000 drops
    topic = "edgedet/n/gate/events"
    sub = mqtt_sub(mosquitto, topic)
    metrics = Metrics(CollectorRegistry())
    outbox = open_outbox(tmp_path / "state", OutboxConfig(), metrics)
    assert outbox is not None
    for i in range(5000):  # 7 MB, more than SQLite's page cache: the replay reads from the file
        outbox.add(topic, f"{i:05d} ".encode() + os.urandom(1000), 1, kind="events")
    path = tmp_path / "state" / FILENAME
    other = sqlite3.connect(path)
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    other.close()
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=4096", "seek=40", "count=3", "conv=notrunc"],
                   check=True, capture_output=True, timeout=30)
    pub = MqttPublisher(MqttConfig(host=mosquitto.host, port=mosquitto.port), "n", ["gate"], metrics, outbox=outbox)
    started = time.monotonic()
    pub.start()
    try:
        wait_for(lambda: metrics.registry.get_sample_value("edgedet_outbox_corrupt_total") == 1.0, 60,
                 "the damaged file to be replaced")
        lost = metrics.registry.get_sample_value("edgedet_outbox_dropped_total", {"reason": "corrupt"})
        assert lost is not None and 0 < lost <= 12
        pub.publish(topic, b"new after the damage", qos=1, kind="events")
        sub.wait_message(topic, b"new after the damage", timeout=60)
        wait_for(lambda: len({m.payload[:5] for m in sub.messages()}) >= 5000 - lost + 1, 60, "every readable row")
        took = time.monotonic() - started
    finally:
        pub.stop(timeout=2.0)
    seqs = sorted({int(m.payload[:5]) for m in sub.messages() if m.payload[:5].isdigit()})
    assert len(seqs) == 5000 - lost
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(FILENAME + ".corrupt-")]
    print(f"{len(seqs)} readable rows of 5000 delivered ({lost:.0f} on damaged pages) in {took:.1f} s")
