"""The MQTT outbox end to end: a real mosquitto (persistence on, stopped and restarted by PID on the
same port), real paho subscribers with persistent sessions, publishers in-process and as real
processes that are ``kill -9``-ed. Every accepted QoS 1 message must arrive, in order per topic
(duplicates allowed: delivery is at-least-once)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import MqttConfig, OutboxConfig
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.outbox import FILENAME, open_outbox
from tests.helpers import REPO, Message, MosquittoBroker, MqttSubscriber, stop_process, wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 20.0
OUTAGE_S = 10.5  # the broker outage the scenario asks for (>= 10 s)


# --------------------------------------------------------------------------- mosquitto, subscriber


@pytest.fixture
def broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """mosquitto with persistence: ``stop()`` (SIGTERM by PID) / ``start()`` keep the port, the
    subscribers' sessions and their queued messages."""
    # A subscriber that is away gets the whole backlog: mosquitto keeps only 1000 queued messages
    # per client by default and drops the rest (see the README note).
    return mosquitto_factory(extra_lines=["max_queued_messages 100000"])


class SeqSubscriber:
    """The ``seq`` of every message a subscriber with a persistent session (fixed id,
    clean_session=False, QoS 1) received on one topic, duplicates included."""

    def __init__(self, sub: MqttSubscriber) -> None:
        self._sub = sub
        self._seqs: list[int] = []  # of the first len(self._seqs) messages, parsed once

    def _parsed(self, messages: list[Message]) -> list[int]:
        self._seqs.extend(int(json.loads(m.payload)["seq"]) for m in messages[len(self._seqs):])
        return list(self._seqs)

    def wait(self, pred: Callable[[list[int]], bool], timeout: float, what: str) -> None:
        try:
            self._sub.wait_for(lambda messages: pred(self._parsed(messages)), timeout, what)
        except TimeoutError:
            seqs = self.snapshot()
            got = first_seen(seqs)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; "
                        f"received {len(seqs)} ({len(got)} distinct), last {got[-5:]}")

    def wait_all(self, expected: range, timeout: float) -> None:
        want = set(expected)
        self.wait(lambda seqs: want.issubset(seqs), timeout, f"seq {expected.start}..{expected.stop - 1}")

    def snapshot(self) -> list[int]:
        return self._parsed(self._sub.messages())


@pytest.fixture
def subscriber(mqtt_sub: Callable[..., MqttSubscriber]) -> Callable[[MosquittoBroker, str], SeqSubscriber]:
    def make(broker: MosquittoBroker, topic: str) -> SeqSubscriber:
        return SeqSubscriber(mqtt_sub(broker, topic, client_id=f"outbox-test-{uuid.uuid4().hex[:8]}",
                                      clean_session=False))

    return make


def first_seen(seqs: list[int]) -> list[int]:
    """Each seq at its first arrival: what a consumer that drops duplicates sees."""
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def assert_in_order(seqs: list[int]) -> None:
    distinct = first_seen(seqs)
    bad = [(a, b) for a, b in zip(distinct, distinct[1:], strict=False) if b < a]
    assert not bad, f"out of order after dedupe: {bad[:5]}"


# --------------------------------------------------------------------------- publisher process

PUBLISHER = textwrap.dedent(
    """
    import logging, signal, sys, threading, time
    from prometheus_client import CollectorRegistry
    from edgedet.config import MqttConfig, OutboxConfig
    from edgedet.metrics import Metrics
    from edgedet.outputs.outbox import open_outbox
    from edgedet.outputs.client import MqttPublisher
    from edgedet.outputs.payload import to_payload
    from edgedet.types import Detection, Detections

    host, port, node, state_dir, seq = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mqtt_cfg = MqttConfig(host=host, port=port, keepalive=5)
    box_cfg = OutboxConfig(max_messages=100000, max_age_s=3600.0)
    metrics = Metrics(CollectorRegistry())
    pub = MqttPublisher(mqtt_cfg, node, ["gate"], metrics, outbox=open_outbox(state_dir, box_cfg, metrics))
    pub.start()
    topic = pub.topics.detections("gate")
    items = (Detection("smoke", 0, 0.9, (1.0, 2.0, 30.0, 40.0)),)
    while not stop.wait(0.02):  # pacing: one frame every ~20 ms, like a camera
        dets = Detections("gate", seq, time.monotonic_ns(), time.time(), 640, 480, "test", items)
        if pub.publish(topic, to_payload(dets, 0.0), qos=1, kind="detections"):
            print(seq, flush=True)  # accepted: on disk before publish() returned
        seq += 1
    pub.stop()
    """
)


class PublisherProcess:
    """The publisher script as a real process; ``last`` is the last seq it reported as accepted."""

    def __init__(self, broker: MosquittoBroker, node: str, state_dir: Path, first_seq: int, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), node, str(state_dir),
                 str(first_seq)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self.first = first_seq
        self.last = first_seq - 1
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"reader:{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.last = int(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def accepted(self) -> range:
        with self._cond:
            return range(self.first, self.last + 1)

    def wait_seq(self, seq: int, timeout: float = DEADLINE_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.last >= seq or self.proc.poll() is not None, timeout):
                pytest.fail(f"publisher stuck at seq {self.last} (waiting for {seq}):\n{self.log.read_text()}")
        assert self.last >= seq, f"publisher exited with {self.proc.returncode}:\n{self.log.read_text()}"

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.finish()

    def terminate(self) -> int:
        code = stop_process(self.proc, timeout=DEADLINE_S)
        self.finish()
        return code

    def finish(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, timeout=5, sig=signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE_S)
        self._reader.join(DEADLINE_S)


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[Callable[..., PublisherProcess]]:
    procs: list[PublisherProcess] = []

    def make(broker: MosquittoBroker, node: str, state_dir: Path, first_seq: int = 1) -> PublisherProcess:
        procs.append(PublisherProcess(broker, node, state_dir, first_seq, tmp_path / f"publisher-{len(procs)}.log"))
        return procs[-1]

    yield make
    for p in procs:
        p.finish()


def replay_figures(log: Path) -> list[tuple[int, float]]:
    """(messages, seconds) from the publisher's 'replay ... done' log lines."""
    pattern = r"replay to \S+ done: (\d+) stored message\(s\) acknowledged in ([0-9.]+) s"
    return [(int(n), float(s)) for n, s in re.findall(pattern, log.read_text())]


def outbox_rows(state_dir: Path) -> int:
    conn = sqlite3.connect(state_dir / FILENAME)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def node() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- scenarios (processes)


@pytest.mark.slow
def test_nothing_is_lost_across_a_broker_outage(
    broker: MosquittoBroker, subscriber: Any, publishers: Any, node: str, tmp_path: Path
) -> None:
    topic = f"edgedet/{node}/gate/detections"
    sub = subscriber(broker, topic)
    pub = publishers(broker, node, tmp_path / "state")
    sub.wait(lambda seqs: len(seqs) >= 10, DEADLINE_S, "the first messages")

    broker.stop()
    before = pub.last
    threading.Event().wait(OUTAGE_S)  # the outage itself is the scenario, not a synchronisation
    broker.start()
    t_up = time.monotonic()
    backlog_end = pub.last
    during = backlog_end - before
    assert during >= 300, f"the publisher only accepted {during} messages during the outage"
    sub.wait_all(range(1, backlog_end + 1), timeout=60)
    t_backlog = time.monotonic() - t_up
    pub.wait_seq(backlog_end + 50)  # live messages keep flowing after the backlog
    assert pub.terminate() == 0  # clean stop: the outbox drains first

    accepted = pub.accepted()
    sub.wait_all(accepted, DEADLINE_S)
    seqs = sub.snapshot()
    assert_in_order(seqs)
    assert set(seqs) == set(accepted)  # nothing extra, nothing missing
    assert outbox_rows(tmp_path / "state") == 0
    outage = [s for s in seqs if before < s <= backlog_end]
    print(f"\noutage {OUTAGE_S} s: {during} accepted while down, {len(set(outage))} received "
          f"({len(outage) - len(set(outage))} duplicates); whole run {len(accepted)} accepted, "
          f"{len(seqs)} received ({len(seqs) - len(set(seqs))} duplicates); backlog at the subscriber "
          f"{t_backlog:.1f} s after the broker restart; publisher replay log {replay_figures(pub.log)}")


@pytest.mark.slow
def test_spooled_messages_survive_kill_9_of_the_publisher(
    broker: MosquittoBroker, subscriber: Any, publishers: Any, node: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    topic = f"edgedet/{node}/gate/detections"
    sub = subscriber(broker, topic)
    first = publishers(broker, node, state)
    sub.wait(lambda seqs: len(seqs) >= 10, DEADLINE_S, "the first messages")

    broker.stop()
    first.wait_seq(first.last + 100)  # ~2 s of messages spooled with no broker
    first.kill9()
    spooled = first.accepted()
    assert outbox_rows(state) >= 100

    broker.start()
    second = publishers(broker, node, state, first_seq=1_000_000)
    sub.wait_all(spooled, timeout=60)
    second.wait_seq(1_000_050)
    sub.wait(lambda seqs: 1_000_050 in seqs, DEADLINE_S, "the second publisher's live messages")
    assert second.terminate() == 0

    seqs = sub.snapshot()
    assert_in_order(seqs)  # the new process's live messages came after the old backlog
    assert set(spooled).issubset(seqs)
    print(f"\nkill -9 with the broker down: {len(spooled)} accepted by the first process, "
          f"{len(set(spooled) & set(seqs))} of them received; replay log {replay_figures(second.log)}")


# --------------------------------------------------------------------------- in-process publisher


def MqttCfg(host: str, port: int, **fields: Any) -> MqttConfig:  # noqa: N802 - reads like the old stand-in
    """The real config section (built directly: no file checks), with a short keepalive."""
    return MqttConfig(host=host, port=port, **{"keepalive": 5, **fields})


def BoxCfg(**fields: Any) -> OutboxConfig:  # noqa: N802
    return OutboxConfig(**{"max_age_s": 3600.0, **fields})


@pytest.fixture
def started() -> Iterator[list[MqttPublisher]]:
    pubs: list[MqttPublisher] = []
    yield pubs
    for p in pubs:
        p.stop(timeout=1.0)


def test_a_backlog_larger_than_the_window_is_not_overtaken_by_live_messages(
    broker: MosquittoBroker, subscriber: Any, started: list[MqttPublisher], node: str, tmp_path: Path
) -> None:
    metrics = Metrics(CollectorRegistry())
    topic = f"edgedet/{node}/gate/events"
    sub = subscriber(broker, topic)
    broker.stop()
    pub = MqttPublisher(MqttCfg(broker.host, broker.port), node, ["gate"], metrics,
                        outbox=open_outbox(tmp_path / "state", BoxCfg(), metrics))
    started.append(pub)
    pub.start()
    for seq in range(350):  # 3.5 replay windows, stored while the broker is away
        assert pub.publish(topic, json.dumps({"seq": seq}), qos=1, kind="events")
    assert metrics.registry.get_sample_value("edgedet_outbox_messages") == 350.0

    broker.start()
    assert pub.wait_connected(DEADLINE_S)
    for seq in range(350, 450):  # live, while the replay is still running
        assert pub.publish(topic, json.dumps({"seq": seq}), qos=1, kind="events")
    sub.wait_all(range(450), DEADLINE_S)
    assert_in_order(sub.snapshot())
    wait_for(lambda: metrics.registry.get_sample_value("edgedet_outbox_messages") == 0.0, DEADLINE_S,
             "the outbox to empty")
    assert metrics.registry.get_sample_value("edgedet_mqtt_published_total", {"kind": "events"}) == 450.0


def test_status_is_never_stored_and_events_only_skips_detections(
    broker: MosquittoBroker, subscriber: Any, started: list[MqttPublisher], node: str, tmp_path: Path
) -> None:
    metrics = Metrics(CollectorRegistry())
    events = subscriber(broker, f"edgedet/{node}/gate/events")
    broker.stop()
    pub = MqttPublisher(MqttCfg(broker.host, broker.port), node, ["gate"], metrics,
                        outbox=open_outbox(tmp_path / "state", BoxCfg(mode="events_only"), metrics))
    started.append(pub)
    pub.start()
    pub.set_camera_status("gate", True)  # remembered, re-published on connect, never stored
    assert pub.publish(f"edgedet/{node}/gate/detections", b'{"seq": 1}', qos=1, kind="detections")
    assert pub.publish(f"edgedet/{node}/gate/events", b'{"seq": 7}', qos=1, kind="events")
    assert pub.publish(f"edgedet/{node}/x", b"retained", qos=1, retain=True, kind="status")
    assert not pub.publish(f"edgedet/{node}/+/bad", b"x", qos=1, kind="events")  # refused up front
    assert metrics.registry.get_sample_value("edgedet_outbox_messages") == 1.0  # only the event

    broker.start()
    events.wait(lambda seqs: 7 in seqs, DEADLINE_S, "the stored event")
    wait_for(lambda: metrics.registry.get_sample_value("edgedet_outbox_messages") == 0.0, DEADLINE_S,
             "the outbox to empty")


def test_unsent_messages_stay_on_disk_after_stop(
    broker: MosquittoBroker, subscriber: Any, node: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    topic = f"edgedet/{node}/gate/events"
    sub = subscriber(broker, topic)
    broker.stop()
    metrics = Metrics(CollectorRegistry())
    pub = MqttPublisher(MqttCfg(broker.host, broker.port), node, ["gate"], metrics,
                        outbox=open_outbox(state, BoxCfg(), metrics))
    pub.start()
    for seq in range(5):
        pub.publish(topic, json.dumps({"seq": seq}), qos=1, kind="events")
    pub.stop(timeout=1.0)  # never connected: nothing to drain
    assert outbox_rows(state) == 5

    broker.start()
    metrics = Metrics(CollectorRegistry())
    again = MqttPublisher(MqttCfg(broker.host, broker.port), node, ["gate"], metrics,
                          outbox=open_outbox(state, BoxCfg(), metrics))
    again.start()
    try:
        sub.wait_all(range(5), DEADLINE_S)
    finally:
        again.stop(timeout=2.0)  # connected: gives the outbox time to hear the last PUBACKs
    assert outbox_rows(state) == 0
