"""The daemon publishes over MQTT with TLS and a password, against a real mosquitto whose
certificates a fixture makes with openssl. Wrong credentials or a CA that does not match give one
clear log line; the daemon keeps running (and retrying) and still exits 0 on SIGTERM."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import (
    Pki,
    auth_lines,
    down_camera,
    make_pki,
    password_file,
    stop_cleanly,
    tls_lines,
    wait_log_line,
)
from tests.daemoncfg import write_config
from tests.helpers import Message, MosquittoBroker, run_daemon, topic_matches, wait_for

pytestmark = pytest.mark.integration

NODE = "testnode"
USER, PASSWORD = "edge", "Tls-Right-Pa55"
ONE_THREAD = {"count": 1, "threads_per_worker": 1}
RETRY_LINE = "retrying in the background every 1-30 s"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """TLS-only listener (server certificate for 127.0.0.1) that wants a username and password."""
    passwords = password_file(tmp_path, {USER: PASSWORD})
    return mosquitto_factory(extra_lines=[*tls_lines(pki), *auth_lines(passwords)])


def _on(topic: str, messages: list[Message]) -> list[Message]:
    return [m for m in messages if topic_matches(topic, m.topic)]


def _at_least(n: int, topic: str) -> Callable[[list[Message]], list[Message] | None]:
    def check(messages: list[Message]) -> list[Message] | None:
        found = _on(topic, messages)
        return found if len(found) >= n else None

    return check


def test_detections_arrive_over_tls_with_password(tmp_path: Path, assets: Any, pki: Pki,
                                                  tls_broker: MosquittoBroker, mqtt_sub: Any) -> None:
    sub = mqtt_sub(tls_broker, f"edgedet/{NODE}/#", username=USER, password=PASSWORD, ca=pki.ca)
    cfg, _ = write_config(
        tmp_path, {"gate": {"url": str(assets.clip), "loop": True, "fps_limit": 5}}, tls_broker.port,
        mqtt={"username": USER, "password": PASSWORD, "tls": {"ca": str(pki.ca)}, "publish_empty": True},
    )
    proc = run_daemon(cfg)
    try:
        topic = f"edgedet/{NODE}/gate/detections"
        found = sub.wait_for(_at_least(3, topic), timeout=120, what="3 detection messages")
        assert all(json.loads(m.payload)["camera"] == "gate" for m in found)
        assert f"connected to MQTT broker 127.0.0.1:{tls_broker.port}" in proc.stderr_text()
        assert f"u'{USER}'" in tls_broker.log_text()  # it logged in as USER
    finally:
        stop_cleanly(proc)
    status = f"edgedet/{NODE}/status"
    sub.wait_for(lambda ms: any(m.payload == b"stopped" for m in _on(status, ms)), 10, "the 'stopped' status")
    assert PASSWORD not in proc.output()


def test_wrong_password_over_tls_is_one_clear_line_and_not_fatal(tmp_path: Path, pki: Pki,
                                                                  tls_broker: MosquittoBroker) -> None:
    cfg, _ = write_config(tmp_path, down_camera(), tls_broker.port, workers=ONE_THREAD,
                          mqtt={"username": USER, "password": "Tls-Wr0ng-Pa55", "tls": {"ca": str(pki.ca)}})
    proc = run_daemon(cfg)
    try:
        expected = (f"ERROR edgedet.publish: MQTT broker 127.0.0.1:{tls_broker.port} refused connection: "
                    "Not authorized (check mqtt.username/password)")
        wait_log_line(proc, lambda ln: ln == expected, "the auth error line")
        wait_for(lambda: tls_broker.log_text().count("not authorised") >= 2, 30, "a second login attempt")
        assert proc.poll() is None, proc.output()
    finally:
        stop_cleanly(proc)
    assert proc.stderr_text().count(expected) == 1
    assert "Tls-Wr0ng-Pa55" not in proc.output()


def test_untrusted_ca_says_certificate_verify_failed_and_keeps_running(tmp_path: Path, pki: Pki,
                                                                       tls_broker: MosquittoBroker) -> None:
    cfg, _ = write_config(tmp_path, down_camera(), tls_broker.port, workers=ONE_THREAD,
                          mqtt={"username": USER, "password": PASSWORD, "tls": {"ca": str(pki.other_ca)}})
    proc = run_daemon(cfg)
    try:
        prefix = f"WARNING edgedet.publish: cannot reach MQTT broker 127.0.0.1:{tls_broker.port} ("
        line = wait_log_line(proc, lambda ln: ln.startswith(prefix), "the TLS error line")
        assert "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in line, line
        assert line.endswith(f"); {RETRY_LINE}"), line
        # it retries: the broker sees another handshake fail ("... failed: ...tlsv1 alert unknown ca")
        wait_for(lambda: tls_broker.log_text().count("unknown ca") >= 2, 30, "a second TLS handshake")
        assert proc.poll() is None, proc.output()
    finally:
        stop_cleanly(proc)
    assert "connected to MQTT broker" not in proc.stderr_text()


def test_client_certificate_listener(tmp_path: Path, pki: Pki, mqtt_sub: Any,
                                     mosquitto_factory: Callable[..., MosquittoBroker]) -> None:
    passwords = password_file(tmp_path, {USER: PASSWORD})
    broker = mosquitto_factory(extra_lines=[*tls_lines(pki, require_certificate=True), *auth_lines(passwords)])
    client = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    sub = mqtt_sub(broker, f"edgedet/{NODE}/status", username=USER, password=PASSWORD, **client)
    cfg, _ = write_config(tmp_path, down_camera(), broker.port, workers=ONE_THREAD,
                          mqtt={"username": USER, "password": PASSWORD,
                                "tls": {key: str(value) for key, value in client.items()}})
    proc = run_daemon(cfg)
    try:
        sub.wait_for(lambda ms: any(m.payload == b"online" for m in ms), 90, "the daemon's 'online' status")
    finally:
        stop_cleanly(proc)
