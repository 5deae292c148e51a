"""Secrets never leave the daemon: the MQTT password and passwords in camera URLs are absent from
its log (at DEBUG), from ``edgedet check-config``, /metrics, /healthz and every MQTT message, in
plain and URL-encoded spelling. And /metrics + /healthz listen on 127.0.0.1 unless told otherwise.

One daemon run (module fixture) feeds every test: a file camera that produces detections and
events, two RTSP cameras with credentials whose server is down (so they keep failing and logging),
and a broker that wants the password.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pytest
import yaml

from tests.brokers import (
    auth_lines,
    healthz,
    password_file,
    require_mosquitto,
    wait_log_line,
)
from tests.helpers import (
    REPO,
    DaemonProcess,
    Message,
    MosquittoBroker,
    MqttSubscriber,
    free_port,
    metrics_text,
    stop_daemon,
    topic_matches,
)
from tests.paths import DEMO_MODEL

pytestmark = pytest.mark.integration

NODE = "testnode"
MQTT_USER = "edge"
MQTT_PASSWORD = "Mq77-P@ss/w0rd!x9"
DOOR_PASSWORD = "S3cr3t-Cam-Pw"
YARD_PASSWORD_IN_URL = "Yard%40Pw%21x7"  # percent-encoded in the URL; the password is "Yard@Pw!x7"


def spellings(secret: str) -> set[str]:
    return {secret, unquote(secret), quote(secret), quote(secret, safe=""), quote_plus(secret)}


SECRETS = sorted(spellings(MQTT_PASSWORD) | spellings(DOOR_PASSWORD) | spellings(unquote(YARD_PASSWORD_IN_URL)))


def _starts(prefix: str, line: str) -> bool:
    return line.startswith(prefix)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


@dataclass(frozen=True, slots=True)
class Outputs:
    log: str  # stdout + stderr of `edgedet --log-level DEBUG run`
    exit_code: int
    check_config: str  # stdout + stderr of `edgedet check-config`
    check_config_code: int
    metrics: str
    healthz: str
    messages: list[Message]
    metrics_port: int
    listening_on: list[str]  # local addresses of the sockets listening on metrics_port


def _addr(hex_addr: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host byte order) -> text."""
    raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_addresses(port: int) -> list[str]:
    """Local addresses of TCP sockets in LISTEN state on ``port`` (Linux /proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(_addr(hex_addr))
    return found


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, assets: Any) -> Iterator[Outputs]:
    require_mosquitto()
    folder = tmp_path_factory.mktemp("secrets")
    broker = MosquittoBroker(folder / "mosquitto",
                             extra_lines=auth_lines(password_file(folder, {MQTT_USER: MQTT_PASSWORD})))
    broker.start()
    sub: MqttSubscriber | None = None
    proc: DaemonProcess | None = None
    try:
        sub = MqttSubscriber(broker, "#", username=MQTT_USER, password=MQTT_PASSWORD)
        metrics_port = free_port()
        cfg = folder / "edgedet.yaml"
        cfg.write_text(yaml.safe_dump({
            "node_id": NODE,
            "state_dir": str(folder / "state"),
            "cameras": {
                "clip": {"url": str(assets.clip), "loop": True, "fps_limit": 5},
                "door": {"url": f"rtsp://admin:{DOOR_PASSWORD}@127.0.0.1:{free_port()}/cam"},
                "yard": {"url": f"rtsp://viewer:{YARD_PASSWORD_IN_URL}@127.0.0.1:{free_port()}/live"},
            },
            "model": {"path": str(DEMO_MODEL)},
            "mqtt": {"host": broker.host, "port": broker.port, "username": MQTT_USER, "password": MQTT_PASSWORD,
                     "keepalive": 10, "publish_empty": True},
            "metrics": {"port": metrics_port},  # host: the default
        }, sort_keys=False))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        check = subprocess.run([sys.executable, "-m", "edgedet", "check-config", str(cfg)], capture_output=True,
                               text=True, cwd=REPO, env=env, timeout=120)

        with open(folder / "daemon.stdout", "wb") as out, open(folder / "daemon.stderr", "wb") as err:
            proc = DaemonProcess([sys.executable, "-m", "edgedet", "--log-level", "DEBUG", "run", "-c", str(cfg)],
                                 stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env)
        proc.stdout_path, proc.stderr_path = folder / "daemon.stdout", folder / "daemon.stderr"
        detections = f"edgedet/{NODE}/clip/detections"
        sub.wait_for(lambda ms: sum(topic_matches(detections, m.topic) for m in ms) >= 3, 120, "3 detections")
        for cam in ("door", "yard"):  # a failed open, and a retry logged at DEBUG
            retry = f"DEBUG edgedet.capture: camera {cam} still down"
            wait_log_line(proc, partial(_starts, retry), f"camera {cam} to fail twice")
        status, body = healthz(metrics_port)
        health = f"{status} {body}"
        metrics = metrics_text(metrics_port)
        listening = listening_addresses(metrics_port)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        sub.wait_for(lambda ms: any(m.payload == b"stopped" for m in ms), 10, "the 'stopped' status")
        yield Outputs(proc.output(), code, check.stdout + check.stderr, check.returncode, metrics, health,
                      sub.messages(), metrics_port, listening)
    finally:
        if proc is not None:
            stop_daemon(proc)
        if sub is not None:
            sub.stop()
        broker.stop()


def test_daemon_log_at_debug_holds_no_secret(outputs: Outputs) -> None:
    assert outputs.exit_code == 0, outputs.log
    assert "Traceback" not in outputs.log
    assert "DEBUG edgedet." in outputs.log
    assert "rtsp://admin:***@127.0.0.1:" in outputs.log and "rtsp://viewer:***@127.0.0.1:" in outputs.log
    assert leaks(outputs.log) == [], outputs.log


def test_check_config_masks_secrets(outputs: Outputs) -> None:
    assert outputs.check_config_code == 0, outputs.check_config
    assert "password: '***'" in outputs.check_config
    assert "rtsp://admin:***@" in outputs.check_config and "rtsp://viewer:***@" in outputs.check_config
    assert leaks(outputs.check_config) == [], outputs.check_config


def test_metrics_hold_no_secret(outputs: Outputs) -> None:
    assert 'camera="door"' in outputs.metrics
    assert leaks(outputs.metrics) == []


def test_healthz_holds_no_secret(outputs: Outputs) -> None:
    assert outputs.healthz.startswith("503 ") and "door" in outputs.healthz, outputs.healthz
    assert leaks(outputs.healthz) == [], outputs.healthz


def test_mqtt_messages_hold_no_secret(outputs: Outputs) -> None:
    topics = {m.topic for m in outputs.messages}
    assert f"edgedet/{NODE}/clip/detections" in topics and f"edgedet/{NODE}/door/status" in topics, topics
    leaked = [(m.topic, found) for m in outputs.messages if (found := leaks(m.topic) + leaks(m.payload))]
    assert leaked == []


def test_metrics_and_health_listen_on_loopback_only_by_default(outputs: Outputs) -> None:
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    assert outputs.listening_on == ["127.0.0.1"], f"port {outputs.metrics_port}: {outputs.listening_on}"
