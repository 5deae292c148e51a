"""MqttPublisher against a real mosquitto broker on a free loopback port, watched by real paho clients."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import socket
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
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter, Gauge

from edgedet.config import MqttConfig, TlsConfig
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.payload import load_schema
from edgedet.types import Detection, Detections

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 15.0


# --------------------------------------------------------------------------- helpers


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll a condition until it holds; fail naming it when the deadline passes."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        tick.wait(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A mosquitto process on a fixed free port; stop()/start() keep the port."""

    def __init__(self, workdir: Path, extra: list[str] | None = None, persistence: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        lines = [f"listener {self.port} {self.host}", "log_dest stderr"]
        if persistence:  # sessions and retained messages survive stop()/start()
            lines += ["persistence true", f"persistence_location {workdir}/"]
        else:
            lines += ["persistence false"]
        lines += extra if extra is not None else ["allow_anonymous true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto' and cannot read tmp_path
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "broker already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        wait_until(
            lambda: proc.poll() is not None or port_open(self.host, self.port), 10, "mosquitto to listen"
        )
        if proc.poll() is not None:
            self.proc = None
            pytest.fail(f"mosquitto exited with {proc.returncode}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def MqttCfg(host: str, port: int, **fields: Any) -> MqttConfig:  # noqa: N802 - reads like the old stand-in
    """The real config section (built directly: no file checks), for a broker at host:port."""
    return MqttConfig(host=host, port=port, **fields)


class FakeMetrics:
    """The three MQTT metrics of metrics.Metrics, in a fresh registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt_published = Counter("t_mqtt_published", "", ("kind",), registry=self.registry)
        self.mqtt_publish_failures = Counter("t_mqtt_failures", "", ("kind",), registry=self.registry)
        self.mqtt_connected = Gauge("t_mqtt_connected", "", registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class Subscriber:
    """A real paho client recording every message; re-subscribes after each reconnect."""

    def __init__(self, broker: Broker, topic: str, persistent_id: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self._subscribed = threading.Event()
        self._topic = topic
        client_id = persistent_id or f"test-sub-{uuid.uuid4().hex[:8]}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=persistent_id is None)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = lambda client, userdata, msg: self.messages.put(msg)
        c.reconnect_delay_set(1, 2)
        c.connect_async(broker.host, broker.port, keepalive=30)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(DEADLINE_S):
            self.close()
            pytest.fail(f"subscriber could not subscribe to {topic}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self._topic, qos=1)

    def expect(
        self, topic: str, payload: bytes | None = None, timeout: float = DEADLINE_S
    ) -> mqtt.MQTTMessage:
        """The next message on ``topic`` (with ``payload`` if given); other messages are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = self.messages.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                pytest.fail(f"no {payload!r} on {topic} within {timeout:.0f} s; seen: {self.seen}")
            self.seen.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            if msg.topic == topic and (payload is None or msg.payload == payload):
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe() -> Iterator[Callable[[Broker, str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(broker: Broker, topic: str = "#", persistent_id: str | None = None) -> Subscriber:
        sub = Subscriber(broker, topic, persistent_id)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()


@pytest.fixture
def publisher() -> Iterator[Callable[..., MqttPublisher]]:
    pubs: list[MqttPublisher] = []

    def make(cfg: MqttCfg, node: str, cameras: tuple[str, ...] = ("gate",), **kw: Any) -> MqttPublisher:
        pub = MqttPublisher(cfg, node, cameras, **kw)
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


def test_online_is_retained_for_a_late_subscriber(broker: Broker, subscribe: Any, publisher: Any,
                                                  node: str) -> None:
    metrics = FakeMetrics()
    early = subscribe(broker, f"edgedet/{node}/status")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    t0 = time.monotonic()
    pub.start()
    assert time.monotonic() - t0 < 1.0
    assert pub.wait_connected(DEADLINE_S)
    early.expect(f"edgedet/{node}/status", b"online")

    late = subscribe(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"online", True)
    assert metrics.value("t_mqtt_connected") == 1.0


def test_camera_status_starts_offline_and_is_retained(broker: Broker, subscribe: Any, publisher: Any,
                                                      node: str) -> None:
    sub = subscribe(broker, f"edgedet/{node}/+/status")
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

    late = subscribe(broker, f"edgedet/{node}/+/status")
    got = {late.expect(f"edgedet/{node}/{c}/status").topic for c in ("gate", "yard")}
    assert len(got) == 2
    assert all(retain and payload == b"online" for _, payload, retain in late.seen)


def test_stop_leaves_retained_stopped(broker: Broker, subscribe: Any, publisher: Any, node: str,
                                      logs: LogWaiter) -> None:
    metrics = FakeMetrics()
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)
    pub.stop()
    pub.stop()  # idempotent
    assert not pub.connected
    assert metrics.value("t_mqtt_connected") == 0.0

    late = subscribe(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"stopped", True)
    assert not logs.messages(logging.WARNING)

    pub.publish_detections(dets())  # after stop: dropped and counted, no exception
    assert metrics.value("t_mqtt_failures_total", kind="detections") == 1.0


def test_last_will_offline_when_the_process_is_killed(broker: Broker, subscribe: Any, node: str) -> None:
    sub = subscribe(broker, f"edgedet/{node}/status")
    code = textwrap.dedent(
        f"""
        import threading, types
        from edgedet.outputs.client import MqttPublisher
        cfg = types.SimpleNamespace(host={broker.host!r}, port={broker.port}, client_id=None,
            username=None, password=None, tls=None, topic_prefix="edgedet", qos=1, keepalive=5,
            publish_empty=False)
        MqttPublisher(cfg, {node!r}, ["gate"]).start()
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
    late = subscribe(broker, f"edgedet/{node}/status")
    msg = late.expect(f"edgedet/{node}/status")
    assert (msg.payload, msg.retain) == (b"offline", True)


# --------------------------------------------------------------------------- detections


def test_detections_are_published_and_match_the_schema(broker: Broker, subscribe: Any, publisher: Any,
                                                       node: str) -> None:
    metrics = FakeMetrics()
    sub = subscribe(broker, f"edgedet/{node}/gate/detections")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)
    pub.publish_detections(dets(seq=7, age_ms=50))

    msg = json.loads(sub.expect(f"edgedet/{node}/gate/detections").payload)
    jsonschema.Draft202012Validator(load_schema()).validate(msg)
    assert (msg["camera"], msg["seq"], msg["width"], msg["height"]) == ("gate", 7, 640, 480)
    assert msg["detections"] == [
        {"label": "person", "class_id": 0, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0]}
    ]
    assert 50.0 <= msg["latency_ms"]["capture_to_publish"] < 5000.0
    assert msg["latency_ms"]["inference"] == 10.0
    assert metrics.value("t_mqtt_published_total", kind="detections") == 1.0
    assert metrics.value("t_mqtt_failures_total", kind="detections") == 0.0


@pytest.mark.parametrize("publish_empty", [False, True])
def test_publish_empty(broker: Broker, subscribe: Any, publisher: Any, node: str,
                       publish_empty: bool) -> None:
    topic = f"edgedet/{node}/gate/detections"
    sub = subscribe(broker, topic)
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


def test_qos0_while_disconnected_is_counted_as_a_failure(broker: Broker, publisher: Any, node: str) -> None:
    metrics = FakeMetrics()
    broker.stop()
    pub = publisher(MqttCfg(broker.host, broker.port, qos=0), node, metrics=metrics)
    pub.start()
    pub.publish_detections(dets())
    assert metrics.value("t_mqtt_failures_total", kind="detections") == 1.0
    assert metrics.value("t_mqtt_published_total", kind="detections") == 0.0


# --------------------------------------------------------------------------- reconnects


def test_reconnects_and_republishes_state_after_broker_restart(
    broker: Broker, subscribe: Any, publisher: Any, node: str, logs: LogWaiter
) -> None:
    metrics = FakeMetrics()
    sub = subscribe(broker, f"edgedet/{node}/#")
    pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
    pub.start()
    sub.expect(f"edgedet/{node}/status", b"online")
    pub.set_camera_status("gate", True)
    sub.expect(f"edgedet/{node}/gate/status", b"online")

    broker.stop()  # no persistence: the restarted broker has no retained messages at all
    wait_until(lambda: not pub.connected, DEADLINE_S, "the publisher to notice the broker is gone")
    assert metrics.value("t_mqtt_connected") == 0.0
    broker.start()

    sub.expect(f"edgedet/{node}/status", b"online")
    sub.expect(f"edgedet/{node}/gate/status", b"online")
    assert pub.wait_connected(DEADLINE_S)
    assert metrics.value("t_mqtt_connected") == 1.0
    lost = logs.messages(logging.WARNING)
    assert len([m for m in lost if m.startswith("lost connection to MQTT broker")]) == 1, lost
    assert len([m for m in logs.messages(logging.INFO) if m.startswith("connected to MQTT broker")]) == 2


def test_qos1_detections_published_during_an_outage_arrive_after_reconnect(
    tmp_path: Path, subscribe: Any, publisher: Any, node: str
) -> None:
    broker = Broker(tmp_path, persistence=True)  # keeps the subscriber's session across the restart
    broker.start()
    try:
        topic = f"edgedet/{node}/gate/detections"
        subscribe(broker, topic, persistent_id=f"test-sub-{node}").close()  # leaves a session behind
        metrics = FakeMetrics()
        pub = publisher(MqttCfg(broker.host, broker.port), node, metrics=metrics)
        pub.start()
        assert pub.wait_connected(DEADLINE_S)

        broker.stop()
        wait_until(lambda: not pub.connected, DEADLINE_S, "the publisher to notice the broker is gone")
        pub.publish_detections(dets(seq=9))  # QoS 1: queued in memory by paho, counted as handed over
        assert metrics.value("t_mqtt_published_total", kind="detections") == 1.0
        assert metrics.value("t_mqtt_failures_total", kind="detections") == 0.0
        broker.start()

        # A session-keeping subscriber, re-created on the restarted broker, gets it whatever the
        # reconnect order of the two clients.
        sub = subscribe(broker, topic, persistent_id=f"test-sub-{node}")
        assert json.loads(sub.expect(topic, timeout=40).payload)["seq"] == 9
        pub.stop()
    finally:
        broker.stop()


def test_start_without_broker_does_not_block_and_connects_later(
    broker: Broker, publisher: Any, node: str, logs: LogWaiter
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
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "edge", "right-Pa55"], check=True,
                   capture_output=True)
    b = Broker(tmp_path, extra=["allow_anonymous false", f"password_file {pwfile}"])
    b.start()
    yield b
    b.stop()


def test_wrong_password_is_refused_with_one_clear_error(auth_broker: Broker, publisher: Any, node: str,
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
    wait_until(lambda: auth_broker.log.read_text().count("not authorised") >= 2, DEADLINE_S,
               "a second refused attempt")
    pub.stop()
    assert len(logs.messages(logging.ERROR)) == 1, logs.messages(logging.ERROR)
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in logs.records)


def test_right_password_connects(auth_broker: Broker, publisher: Any, node: str) -> None:
    cfg = MqttCfg(auth_broker.host, auth_broker.port, username="edge", password="right-Pa55")
    pub = publisher(cfg, node)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)


# --------------------------------------------------------------------------- TLS


def self_signed(workdir: Path, name: str) -> tuple[Path, Path]:
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = self_signed(tmp_path, "server")
    b = Broker(tmp_path, extra=["allow_anonymous true", f"certfile {cert}", f"keyfile {key}"])
    b.start()
    yield b, cert
    b.stop()


def test_tls_with_the_broker_ca_connects(tls_broker: tuple[Broker, Path], publisher: Any, node: str) -> None:
    broker, ca = tls_broker
    pub = publisher(MqttCfg(broker.host, broker.port, tls=TlsConfig(ca=str(ca))), node)
    pub.start()
    assert pub.wait_connected(DEADLINE_S)


def test_tls_with_an_untrusted_certificate_says_why(tls_broker: tuple[Broker, Path], publisher: Any,
                                                    node: str, tmp_path: Path, logs: LogWaiter) -> None:
    broker, _ = tls_broker
    other_ca, _ = self_signed(tmp_path, "other")
    pub = publisher(MqttCfg(broker.host, broker.port, tls=TlsConfig(ca=str(other_ca))), node)
    pub.start()
    record = logs.wait_for(lambda r: r.levelno == logging.WARNING)
    assert f"cannot reach MQTT broker 127.0.0.1:{broker.port}" in record.getMessage()
    assert "certificate verify failed" in record.getMessage()
    assert not pub.connected
