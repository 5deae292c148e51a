"""MqttPublisher against a real mosquitto broker on a free loopback port (``mosquitto_factory``),
watched by real paho clients (``mqtt_sub``)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import MqttConfig, TlsConfig
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.schemas import load_schema
from edgedet.types import Detection, Detections
from tests.brokers import Pki, auth_lines, make_pki, password_file, tls_lines
from tests.helpers import REPO, MosquittoBroker, wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 15.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """No persistence: a restarted broker has no retained messages and no sessions at all."""
    return mosquitto_factory(persistence=False)


def MqttCfg(host: str, port: int, **fields: Any) -> MqttConfig:  # noqa: N802 - reads like the old stand-in
    """The real config section (built directly: no file checks), for a broker at host:port."""
    return MqttConfig(host=host, port=port, **fields)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def publisher() -> Iterator[Callable[..., MqttPublisher]]:
    pubs: list[MqttPublisher] = []

    def make(cfg: MqttConfig, node: str, cameras: tuple[str, ...] = ("gate",), **kw: Any) -> MqttPublisher:
        metrics = kw.pop("metrics") if "metrics" in kw else Metrics(CollectorRegistry())
        pub = MqttPublisher(cfg, node, cameras, metrics, **kw)
        pubs.append(pub)
        return pub

    yield make
    for pub in pubs:
        pub.stop()


@pytest.fixture
def node() -> str:
    return f"node{uuid.uuid4().hex[:6]}"


def dets(camera: str = "gate", seq: int = 1, empty: bool = False, age_ms: float = 0.0) -> Detections:
    items = () if empty else (Detection("person", 0, 0.9, (1.0, 2.0, 30.0, 40.0)),)
    return Detections(
        camera=camera, seq=seq, t_mono_ns=time.monotonic_ns() - int(age_ms * 1e6), t_wall=time.time(),
        width=640, height=480, model="yolov8n", items=items,
        timings={"queue_wait": 0.001, "preprocess": 0.002, "inference": 0.01, "postprocess": 0.001},
    )


class LogWaiter(logging.Handler):
    """Collects edgedet.outputs.client records; lets a test wait for one without sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[logging.LogRecord], bool], timeout: float = DEADLINE_S
    ) -> logging.LogRecord:
        def match() -> logging.LogRecord | None:
            return next((r for r in self.records if pred(r)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                pytest.fail(f"no matching log record; got {[r.getMessage() for r in self.records]}")
            found = match()
            assert found is not None
            return found

    def messages(self, level: int) -> list[str]:
        with self._cond:
            return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logs() -> Iterator[LogWaiter]:
    logger = logging.getLogger("edgedet.publish")
    handler = LogWaiter()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


# --------------------------------------------------------------------------- availability


def test_online_is_retained_for_a_late_subscriber(broker: MosquittoBroker, mqtt_sub: Any, publisher: Any,
                                                  node: str) -> None:
    metrics = Metrics(CollectorRegistry())
    early = mqtt_sub(broker, f"edgedet/{node}/status")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    t0 = time.monotonic()
    pub.start()
    assert time.monotonic() - t0 < 1.0
    assert pub.wait_connected(DEADLINE_S)
    early.expect(f"edgedet/{node}/status", b"online")

    late = mqtt_sub(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"online", True)
    assert value(metrics, "edgedet_mqtt_connected") == 1.0


def test_camera_status_starts_offline_and_is_retained(broker: MosquittoBroker, mqtt_sub: Any, publisher: Any,
                                                      node: str) -> None:
    sub = mqtt_sub(broker, f"edgedet/{node}/+/status")
    pub = publisher(MqttCfg(broker.host, broker.port), node, cameras=("gate", "yard"))
    pub.start()
    sub.expect(f"edgedet/{node}/gate/status", b"offline")
    sub.expect(f"edgedet/{node}/yard/status", b"offline")

    pub.set_camera_status("gate", True)
    pub.set_camera_status("gate", True)  # unchanged: not published again
    pub.set_camera_status("yard", False)  # unchanged
    pub.set_camera_status("yard", True)
    sub.expect(f"edgedet/{node}/gate/status", b"online")
    sub.expect(f"edgedet/{node}/yard/status", b"online")
    assert [s for s in sub.seen if s[1] == b"online"] == [
        (f"edgedet/{node}/gate/status", b"online", False),
        (f"edgedet/{node}/yard/status", b"online", False),
    ]

    late = mqtt_sub(broker, f"edgedet/{node}/+/status")
    got = {late.expect(f"edgedet/{node}/{c}/status").topic for c in ("gate", "yard")}
    assert len(got) == 2
    assert all(retain and payload == b"online" for _, payload, retain in late.seen)


def test_stop_leaves_retained_stopped(broker: MosquittoBroker, mqtt_sub: Any, publisher: Any, node: str,
                                      logs: LogWaiter) -> None:
    metrics = Metrics(CollectorRegistry())
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)
    pub.stop()
    pub.stop()  # idempotent
    assert not pub.connected
    assert value(metrics, "edgedet_mqtt_connected") == 0.0

    late = mqtt_sub(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"stopped", True)
    assert not logs.messages(logging.WARNING)

    pub.publish_detections(dets())  # after stop: dropped and counted, no exception
    assert value(metrics, "edgedet_mqtt_publish_failures_total", kind="detections") == 1.0


def test_last_will_offline_when_the_process_is_killed(broker: MosquittoBroker, mqtt_sub: Any, node: str) -> None:
    sub = mqtt_sub(broker, f"edgedet/{node}/status")
    code = textwrap.dedent(
        f"""
        import threading
        from edgedet.outputs.client import MqttPublisher
        from prometheus_client import CollectorRegistry
        from edgedet.config import MqttConfig
        from edgedet.metrics import Metrics
        cfg = MqttConfig(host={broker.host!r}, port={broker.port}, keepalive=5)
        MqttPublisher(cfg, {node!r}, ["gate"], Metrics(CollectorRegistry())).start()
        threading.Event().wait()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    try:
        sub.expect(f"edgedet/{node}/status", b"online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE_S)
        sub.expect(f"edgedet/{node}/status", b"offline", timeout=15)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=DEADLINE_S)
    late = mqtt_sub(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"offline", True)


# --------------------------------------------------------------------------- detections


def test_detections_are_published_and_match_the_schema(broker: MosquittoBroker, mqtt_sub: Any, publisher: Any,
                                                       node: str) -> None:
    metrics = Metrics(CollectorRegistry())
    sub = mqtt_sub(broker, f"edgedet/{node}/gate/detections")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)
    pub.publish_detections(dets(seq=7, age_ms=50))

    msg = json.loads(sub.expect(f"edgedet/{node}/gate/detections").payload)
    jsonschema.Draft202012Validator(load_schema("detections")).validate(msg)
    assert (msg["camera"], msg["seq"], msg["width"], msg["height"]) == ("gate", 7, 640, 480)
    assert msg["detections"] == [
        {"label": "person", "class_id": 0, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0], "track_id": None}
    ]
    assert 50.0 <= msg["latency_ms"]["capture_to_publish"] < 5000.0
    assert msg["latency_ms"]["inference"] == 10.0
    assert value(metrics, "edgedet_mqtt_published_total", kind="detections") == 1.0
    assert value(metrics, "edgedet_mqtt_publish_failures_total", kind="detections") == 0.0


@pytest.mark.parametrize("publish_empty", [False, True])
def test_publish_empty(broker: MosquittoBroker, mqtt_sub: Any, publisher: Any, node: str,
                       publish_empty: bool) -> None:
    topic = f"edgedet/{node}/gate/detections"
    sub = mqtt_sub(broker, topic)
    pub = publisher(MqttCfg(broker.host, broker.port, publish_empty=publish_empty), node)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)
    pub.publish_detections(dets(seq=1, empty=True))
    pub.publish_detections(dets(seq=2))  # same client and QoS: arrives after seq 1 if that was sent

    first = json.loads(sub.expect(topic).payload)
    if publish_empty:
        assert (first["seq"], first["detections"]) == (1, [])
        assert json.loads(sub.expect(topic).payload)["seq"] == 2
    else:
        assert first["seq"] == 2


def test_qos0_while_disconnected_is_counted_as_a_failure(broker: MosquittoBroker, publisher: Any, node: str) -> None:
    metrics = Metrics(CollectorRegistry())
    broker.stop()
    pub = publisher(MqttCfg(broker.host, broker.port, qos=0), node, metrics=metrics)
    pub.start()
    pub.publish_detections(dets())
    assert value(metrics, "edgedet_mqtt_publish_failures_total", kind="detections") == 1.0
    assert value(metrics, "edgedet_mqtt_published_total", kind="detections") == 0.0


# --------------------------------------------------------------------------- reconnects


def test_reconnects_and_republishes_state_after_broker_restart(
    broker: MosquittoBroker, mqtt_sub: Any, publisher: Any, node: str, logs: LogWaiter
) -> None:
    metrics = Metrics(CollectorRegistry())
    sub = mqtt_sub(broker, f"edgedet/{node}/#")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    sub.expect(f"edgedet/{node}/status", b"online")
    pub.set_camera_status("gate", True)
    sub.expect(f"edgedet/{node}/gate/status", b"online")

    broker.stop()  # no persistence: the restarted broker has no retained messages at all
    wait_for(lambda: not pub.connected, DEADLINE_S, "the publisher to notice the broker is gone")
    assert value(metrics, "edgedet_mqtt_connected") == 0.0
    broker.start()

    sub.expect(f"edgedet/{node}/status", b"online")
    sub.expect(f"edgedet/{node}/gate/status", b"online")
    assert pub.wait_connected(DEADLINE_S)
    assert value(metrics, "edgedet_mqtt_connected") == 1.0
    lost = logs.messages(logging.WARNING)
    assert len([m for m in lost if m.startswith("lost connection to MQTT broker")]) == 1, lost
    assert len([m for m in logs.messages(logging.INFO) if m.startswith("connected to MQTT broker")]) == 2


def test_qos1_detections_published_during_an_outage_arrive_after_reconnect(
    mosquitto_factory: Callable[..., MosquittoBroker], mqtt_sub: Any, publisher: Any, node: str
) -> None:
    broker = mosquitto_factory()  # persistence: keeps the subscriber's session across the restart
    topic = f"edgedet/{node}/gate/detections"
    mqtt_sub(broker, topic, client_id=f"test-sub-{node}", clean_session=False).stop()  # leaves a session behind
    metrics = Metrics(CollectorRegistry())
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)

    broker.stop()
    wait_for(lambda: not pub.connected, DEADLINE_S, "the publisher to notice the broker is gone")
    pub.publish_detections(dets(seq=9))  # QoS 1: queued in memory by paho, counted as handed over
    assert value(metrics, "edgedet_mqtt_published_total", kind="detections") == 1.0
    assert value(metrics, "edgedet_mqtt_publish_failures_total", kind="detections") == 0.0
    broker.start()

    # A session-keeping subscriber, re-created on the restarted broker, gets it whatever the
    # reconnect order of the two clients.
    sub = mqtt_sub(broker, topic, client_id=f"test-sub-{node}", clean_session=False)
    assert json.loads(sub.expect(topic, timeout=40).payload)["seq"] == 9
    pub.stop()


def test_start_without_broker_does_not_block_and_connects_later(
    broker: MosquittoBroker, publisher: Any, node: str, logs: LogWaiter
) -> None:
    broker.stop()
    pub = publisher(MqttCfg(broker.host, broker.port), node)
    t0 = time.monotonic()
    pub.start()
    assert time.monotonic() - t0 < 1.0
    assert not pub.connected
    logs.wait_for(lambda r: r.getMessage().startswith("cannot reach MQTT broker"))

    broker.start()
    assert pub.wait_connected(DEADLINE_S)
    warnings = logs.messages(logging.WARNING)
    assert len(warnings) == 1, warnings  # one line per state change, not one per retry
    assert f"127.0.0.1:{broker.port}" in warnings[0]


# --------------------------------------------------------------------------- authentication


@pytest.fixture
def auth_broker(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    passwords = password_file(tmp_path, {"edge": "right-Pa55"})
    return mosquitto_factory(extra_lines=auth_lines(passwords), persistence=False)


def test_wrong_password_is_refused_with_one_clear_error(auth_broker: MosquittoBroker, publisher: Any, node: str,
                                                        logs: LogWaiter,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wr0ng-S3cret-pw"
    cfg = MqttCfg(auth_broker.host, auth_broker.port, username="edge", password=secret)
    pub = publisher(cfg, node)
    pub.start()
    record = logs.wait_for(lambda r: r.levelno == logging.ERROR)
    assert record.getMessage() == (
        f"MQTT broker 127.0.0.1:{auth_broker.port} refused connection: Not authorized "
        "(check mqtt.username/password)"
    )
    assert not pub.connected
    # paho retries with backoff; wait for the broker to refuse a second time: still one ERROR line
    wait_for(lambda: auth_broker.log_text().count("not authorised") >= 2, DEADLINE_S,
             "a second refused attempt")
    pub.stop()
    assert len(logs.messages(logging.ERROR)) == 1, logs.messages(logging.ERROR)
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in logs.records)


def test_right_password_connects(auth_broker: MosquittoBroker, publisher: Any, node: str) -> None:
    cfg = MqttCfg(auth_broker.host, auth_broker.port, username="edge", password="right-Pa55")
    pub = publisher(cfg, node)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_broker(tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]) -> tuple[MosquittoBroker, Pki]:
    pki = make_pki(tmp_path / "pki")
    return mosquitto_factory(extra_lines=tls_lines(pki), persistence=False), pki


def test_tls_with_the_broker_ca_connects(tls_broker: tuple[MosquittoBroker, Pki], publisher: Any,
                                         node: str) -> None:
    broker, pki = tls_broker
    pub = publisher(MqttCfg(broker.host, broker.port, tls=TlsConfig(ca=str(pki.ca))), node)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)


def test_tls_with_an_untrusted_certificate_says_why(tls_broker: tuple[MosquittoBroker, Pki], publisher: Any,
                                                    node: str, logs: LogWaiter) -> None:
    broker, pki = tls_broker
    pub = publisher(MqttCfg(broker.host, broker.port, tls=TlsConfig(ca=str(pki.other_ca))), node)
    pub.start()
    record = logs.wait_for(lambda r: r.levelno == logging.WARNING)
    assert f"cannot reach MQTT broker 127.0.0.1:{broker.port}" in record.getMessage()
    assert "certificate verify failed" in record.getMessage()
    assert not pub.connected
