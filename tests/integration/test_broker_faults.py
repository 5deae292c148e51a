"""Broker faults for real (issue 10, items 6-8): mosquitto with ``max_packet_size``, a long outage
that fills paho's queue, and a silent partition made by SIGSTOPping a TCP proxy in front of the
broker. The publisher runs in-process (no model needed); what is asserted is what a subscriber and
/metrics would see."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import MqttConfig, OutboxConfig
from edgedet.metrics import Metrics
from edgedet.outputs import client as client_module
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.outbox import FILENAME, open_outbox
from tests.helpers import MosquittoBroker, MqttSubscriber, free_port, stop_process, wait_for

pytestmark = pytest.mark.integration

NODE = "faultnode"
DEADLINE_S = 30.0


@pytest.fixture
def publishers() -> Iterator[list[MqttPublisher]]:
    started: list[MqttPublisher] = []
    yield started
    for pub in started:
        pub.stop(timeout=1.0)


def make_publisher(publishers: list[MqttPublisher], port: int, metrics: Metrics, state: Path | None,
                   mode: str = "all", **mqtt: Any) -> MqttPublisher:
    outbox = None if state is None else open_outbox(state, OutboxConfig(mode=mode), metrics)  # type: ignore[arg-type]
    pub = MqttPublisher(MqttConfig(host="127.0.0.1", port=port, **mqtt), NODE, ["gate"], metrics, outbox=outbox)
    publishers.append(pub)
    pub.start()
    return pub


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"{name}{labels} not exported"
    return got


def retained(broker: MosquittoBroker, mqtt_sub: Callable[..., MqttSubscriber], topics: list[str],
             timeout: float = 10.0, want: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The newest value of each topic as a fresh subscriber sees it (its retained copy, then any
    live update), once every topic has one (and, with ``want``, once those values are reached)."""
    sub = mqtt_sub(broker, f"edgedet/{NODE}/#")

    def state(messages: list[Any]) -> dict[str, bytes] | None:
        last = {m.topic: m.payload for m in messages}
        if not set(topics) <= set(last) or any(last.get(t) != v for t, v in (want or {}).items()):
            return None
        return last

    try:
        found = sub.wait_for(state, timeout, f"retained {topics}")
    except TimeoutError:
        got = [(m.topic, m.payload[:20], m.retain) for m in sub.messages()][:30]
        pytest.fail(f"retained {topics} not as wanted ({want}): {got}")
    assert found is not None
    return found


# --------------------------------------------------------------------------- item 6: oversized


def test_a_message_the_broker_refuses_is_parked_after_3_disconnects_and_the_rest_flows(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Callable[..., MqttSubscriber],
    publishers: list[MqttPublisher], tmp_path: Path,
) -> None:
    broker = mosquitto_factory(extra_lines=["max_packet_size 20000"])  # below mqtt.max_payload_bytes
    sub = mqtt_sub(broker, f"edgedet/{NODE}/gate/events")
    metrics = Metrics(CollectorRegistry())
    pub = make_publisher(publishers, broker.port, metrics, tmp_path / "state")
    assert pub.wait_connected(10)
    topic = f"edgedet/{NODE}/gate/events"
    started = time.monotonic()
    pub.publish(topic, b"before", qos=1, kind="events")
    pub.publish(topic, b"B" * 50_000, qos=1, kind="events")  # mosquitto disconnects on it
    for i in range(20):
        pub.publish(topic, f"after {i}".encode(), qos=1, kind="events")
    sub.wait_for(lambda ms: sum(m.payload.startswith(b"after") for m in ms) == 20, DEADLINE_S,
                 "the 20 messages queued behind the oversized one")
    took = time.monotonic() - started
    assert value(metrics, "edgedet_mqtt_parked_total", kind="events", reason="disconnects") == 1.0
    distinct = list(dict.fromkeys(m.payload for m in sub.messages()))  # at-least-once: duplicates allowed
    assert distinct[:2] == [b"before", b"after 0"] and len(distinct) == 21  # never the oversized one
    assert "client" in broker.log_text()  # the broker did refuse it (connection closed)
    wait_for(lambda: value(metrics, "edgedet_outbox_messages") == 0, DEADLINE_S, "the outbox to drain")
    parked = sqlite3.connect(tmp_path / "state" / FILENAME).execute("SELECT reason, length(payload) FROM parked")
    assert parked.fetchall() == [("disconnects", 50_000)]
    print(f"oversized row parked and 20 rows behind it delivered in {took:.1f} s")


def test_a_direct_message_the_broker_refuses_is_dropped_after_3_connects(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Callable[..., MqttSubscriber],
    publishers: list[MqttPublisher], tmp_path: Path,
) -> None:
    """``outbox.mode: events_only``: detections live only in paho's queue, which paho re-sends
    after every reconnect; a too-large one must not loop forever either."""
    broker = mosquitto_factory(extra_lines=["max_packet_size 20000"])
    topic = f"edgedet/{NODE}/gate/detections"
    sub = mqtt_sub(broker, topic)
    metrics = Metrics(CollectorRegistry())
    pub = make_publisher(publishers, broker.port, metrics, tmp_path / "state", mode="events_only")
    assert pub.wait_connected(10)
    pub.publish(topic, b"D" * 50_000, qos=1, kind="detections")
    for i in range(10):
        pub.publish(topic, f"after {i}".encode(), qos=1, kind="detections")
    sub.wait_for(lambda ms: {f"after {i}".encode() for i in range(10)} <= {m.payload for m in ms}, DEADLINE_S,
                 "the detections behind the oversized one")
    assert value(metrics, "edgedet_mqtt_parked_total", kind="detections", reason="disconnects") == 1.0
    assert all(len(m.payload) < 100 for m in sub.messages())


def test_max_payload_bytes_reencodes_snapshots_and_parks_the_rest_at_once(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Callable[..., MqttSubscriber],
    publishers: list[MqttPublisher], tmp_path: Path,
) -> None:
    broker = mosquitto_factory(extra_lines=["max_packet_size 40000"])
    sub = mqtt_sub(broker, f"edgedet/{NODE}/#")
    metrics = Metrics(CollectorRegistry())
    pub = make_publisher(publishers, broker.port, metrics, tmp_path / "state", max_payload_bytes=30_000)
    assert pub.wait_connected(10)
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)  # a JPEG of noise: ~1 MB
    jpeg = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    assert len(jpeg) > 300_000
    snap_topic, ev_topic = f"edgedet/{NODE}/gate/snapshot", f"edgedet/{NODE}/gate/events"
    assert pub.publish(snap_topic, jpeg, qos=1, retain=True, kind="snapshot")
    assert not pub.publish(ev_topic, b"E" * 35_000, qos=1, kind="events")  # parked, not sent
    pub.publish(ev_topic, b"small", qos=1, kind="events")
    snap = sub.wait_message(snap_topic, timeout=DEADLINE_S)
    sub.wait_message(ev_topic, b"small", timeout=DEADLINE_S)
    image = cv2.imdecode(np.frombuffer(snap.payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and len(snap.payload) <= 30_000
    assert [len(m.payload) for m in sub.messages(ev_topic)] == [5]
    assert value(metrics, "edgedet_mqtt_parked_total", kind="events", reason="too_large") == 1.0
    assert value(metrics, "edgedet_mqtt_connected") == 1.0  # never disconnected
    print(f"snapshot {len(jpeg)} B -> {len(snap.payload)} B ({image.shape[1]}x{image.shape[0]})")


# --------------------------------------------------------------------------- item 7: paho's cap


def test_retained_state_is_delivered_after_an_outage_that_filled_the_queue(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Callable[..., MqttSubscriber],
    publishers: list[MqttPublisher], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "MAX_QUEUED_MESSAGES", 200)  # 10 000 in production
    broker = mosquitto_factory()
    metrics = Metrics(CollectorRegistry())
    pub = make_publisher(publishers, broker.port, metrics, tmp_path / "state", mode="events_only", keepalive=5)
    assert pub.wait_connected(10)
    broker.stop()
    wait_for(lambda: not pub.connected, 10, "the publisher to see the outage")
    det = f"edgedet/{NODE}/gate/detections"
    accepted = sum(pub.publish(det, f'{{"seq": {i}}}', qos=1, kind="detections") for i in range(500))
    pub.set_camera_status("gate", True)  # changes during the outage
    pub.set_retained(f"edgedet/{NODE}/gate/person/active", "ON")
    broker.start()
    assert pub.wait_connected(DEADLINE_S)
    node, cam, active = (f"edgedet/{NODE}/status", f"edgedet/{NODE}/gate/status",
                         f"edgedet/{NODE}/gate/person/active")
    state = retained(broker, mqtt_sub, [node, cam, active], timeout=DEADLINE_S)
    assert (state[node], state[cam], state[active]) == (b"online", b"online", b"ON")
    failures = value(metrics, "edgedet_mqtt_publish_failures_total", kind="detections")
    assert accepted + failures == 500 and 195 <= accepted <= 200, (accepted, failures)  # the cap, minus statuses
    assert value(metrics, "edgedet_mqtt_publish_failures_total", kind="status") == 0.0


# --------------------------------------------------------------------------- item 8: partition


PROXY = textwrap.dedent(
    """
    import socket, sys, threading
    listen, upstream = int(sys.argv[1]), int(sys.argv[2])
    server = socket.create_server(("127.0.0.1", listen))
    print("ready", flush=True)
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    while True:
        client, _ = server.accept()
        try:
            up = socket.create_connection(("127.0.0.1", upstream))
        except OSError:
            client.close()
            continue
        for a, b in ((client, up), (up, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    """
)


@pytest.fixture
def proxy(mosquitto: MosquittoBroker) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A TCP relay 127.0.0.1:<port> -> mosquitto, as a subprocess (SIGSTOP it: a silent partition)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", PROXY, str(port), str(mosquitto.port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc, port
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc, timeout=5)


def test_after_a_silent_partition_the_broker_holds_the_current_retained_state(
    mosquitto: MosquittoBroker, proxy: tuple[subprocess.Popen[bytes], int],
    mqtt_sub: Callable[..., MqttSubscriber], publishers: list[MqttPublisher], tmp_path: Path,
) -> None:
    proc, port = proxy
    metrics = Metrics(CollectorRegistry())
    pub = make_publisher(publishers, port, metrics, tmp_path / "state", keepalive=5)
    assert pub.wait_connected(10)
    cam, flag, marker = (f"edgedet/{NODE}/gate/status", f"edgedet/{NODE}/gate/person/active",
                         f"edgedet/{NODE}/gate/events")
    pub.set_camera_status("gate", True)
    pub.set_retained(flag, "ON")
    retained(mosquitto, mqtt_sub, [cam, flag], want={f"edgedet/{NODE}/status": b"online", cam: b"online", flag: b"ON"})

    os.kill(proc.pid, signal.SIGSTOP)  # packets vanish; no FIN, no RST
    stopped = time.monotonic()
    pub.set_camera_status("gate", False)  # written into the dead socket, never acknowledged
    pub.set_retained(flag, "OFF")
    wait_for(lambda: not pub.connected, 30, "paho's keepalive to notice the partition")
    noticed = time.monotonic() - stopped
    pub.set_camera_status("gate", True)  # the camera recovers while the broker is unreachable
    pub.set_retained(flag, "ON")
    os.kill(proc.pid, signal.SIGCONT)
    assert pub.wait_connected(DEADLINE_S)
    # paho would re-send the old unacknowledged messages right after the fresh state, on the same
    # connection: once a QoS 1 message published after the reconnect is through, they would be too.
    sub = mqtt_sub(mosquitto, marker)
    pub.publish(marker, b"marker", qos=1, kind="events")
    sub.wait_message(marker, b"marker", timeout=DEADLINE_S)
    state = retained(mosquitto, mqtt_sub, [cam, flag])
    assert (state[f"edgedet/{NODE}/status"], state[cam], state[flag]) == (b"online", b"online", b"ON"), state
    print(f"partition noticed after {noticed:.1f} s (keepalive 5 s); retained state current after reconnect")
