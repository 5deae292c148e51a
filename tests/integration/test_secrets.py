"""Secrets never leave the daemon: the MQTT password, passwords in camera URLs of every shape and
secret-looking URL parameters are absent from its log (at DEBUG), from ``edgedet check-config``,
from its errors (a config with bad URLs, at start and on reload), /metrics, /healthz and every
MQTT message, in plain and URL-encoded spelling. And /metrics + /healthz listen on 127.0.0.1
unless told otherwise.

One daemon run (module fixture) feeds the daemon tests: a file camera that produces detections and
events, RTSP/HTTP cameras of every valid URL shape whose server is down (so they keep failing and
logging), a broker that wants the password, and three reloads (an alias bomb, a bad URL with a new
password, a good camera with a new password). The URL shapes that a config rejects run through
``check-config`` and ``run`` (exit 2).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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

# Valid camera URLs of every shape: (camera, URL with {port} for a port nobody listens on, masked
# form expected in check-config and the log, the secrets in it). Each camera stays down.
GOOD_SHAPES = [
    ("door", "rtsp://admin:" + DOOR_PASSWORD + "@127.0.0.1:{port}/cam", "rtsp://admin:***@127.0.0.1:{port}/cam",
     [DOOR_PASSWORD]),
    ("yard", "rtsp://viewer:" + YARD_PASSWORD_IN_URL + "@127.0.0.1:{port}/live",
     "rtsp://viewer:***@127.0.0.1:{port}/live", [YARD_PASSWORD_IN_URL]),
    ("token", "rtsp://127.0.0.1:{port}/live?auth_token=Tok-A1b2C3d4&ch=1",
     "rtsp://127.0.0.1:{port}/live?auth_token=***&ch=1", ["Tok-A1b2C3d4"]),
    ("dvr", "rtsp://127.0.0.1:{port}/user=admin&password=Dvr-Pw-5e6f&channel=1",
     "rtsp://127.0.0.1:{port}/user=admin&password=***&channel=1", ["Dvr-Pw-5e6f"]),
    ("snap", "http://127.0.0.1:{port}/snap.mjpg?apikey=Api-K-7g8h&X-Amz-Signature=Sig-9i0j&access_key=Acc-1k2l",
     "http://127.0.0.1:{port}/snap.mjpg?apikey=***&X-Amz-Signature=***&access_key=***",
     ["Api-K-7g8h", "Sig-9i0j", "Acc-1k2l"]),
    ("session", "https://127.0.0.1:{port}/x?SessionID=Sess-3m4n&passphrase=Phr-5o6p#access_token=Frag-7q8r",
     "https://127.0.0.1:{port}/x?SessionID=***&passphrase=***#access_token=***",
     ["Sess-3m4n", "Phr-5o6p", "Frag-7q8r"]),
]
# Camera URLs the config rejects: (camera, URL, the expected error after 'cameras.<camera>.url: ', secrets).
BAD_SHAPES = [
    ("noscheme", "admin:NoScheme-Pw1@127.0.0.1/cam",
     "expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got 'admin:***@127.0.0.1/cam'): "
     "a URL with a password needs its scheme, e.g. rtsp://", ["NoScheme-Pw1"]),
    ("oneslash", "rtsp:/admin:OneSlash-Pw2@127.0.0.1/cam",
     "expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got 'rtsp:/admin:***@127.0.0.1/cam'): "
     "write two slashes after 'rtsp:'", ["OneSlash-Pw2"]),
    ("relative", "//admin:Rel-Pw3@127.0.0.1/cam",
     "expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got '//admin:***@127.0.0.1/cam'): "
     "a URL with a password needs its scheme, e.g. rtsp://", ["Rel-Pw3"]),
    ("filelike", "cam.local/live?auth_token=FileTok-4x",
     "file not found: {dir}/cam.local/live?auth_token=***", ["FileTok-4x"]),
    ("badport", "rtsp://admin:BadPort-Pw5@127.0.0.1:99999/x",
     "bad host or port in URL; percent-encode special characters in the password "
     "(got 'rtsp://admin:***@127.0.0.1:99999/x')", ["BadPort-Pw5"]),
    ("typo", "rstp://admin:Typo%2FPw6@127.0.0.1/x",
     "expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got 'rstp://admin:***@127.0.0.1/x')",
     ["Typo%2FPw6"]),
    ("slashes", "rtsp:/admin:Sl@sh/Pw7@127.0.0.1/x",
     "expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got 'rtsp:/admin:***@127.0.0.1/x'): "
     "write two slashes after 'rtsp:'", ["Sl@sh/Pw7"]),
]
RELOAD_BAD_PASSWORD = "Reload-Bad-Pw-8s"  # in a URL without its scheme: the reload is rejected
RELOAD_PASSWORD = "Reload-New-Pw-9t"  # a camera added by a reload
WEB_TOKEN = "Web-Tok3n-Secret-x7Q9z"  # web.auth_token: the console's bearer / basic-auth secret


def spellings(secret: str) -> set[str]:
    return {secret, unquote(secret), quote(secret), quote(secret, safe=""), quote_plus(secret),
            quote(unquote(secret), safe=""), quote_plus(unquote(secret))}


ALL_SECRETS = [MQTT_PASSWORD, RELOAD_BAD_PASSWORD, RELOAD_PASSWORD, WEB_TOKEN]
ALL_SECRETS += [secret for *_, secrets in GOOD_SHAPES + BAD_SHAPES for secret in secrets]
SECRETS = sorted({spelling for secret in ALL_SECRETS for spelling in spellings(secret)})


def _starts(prefix: str, line: str) -> bool:
    return line.startswith(prefix)


def _rejected(word: str, line: str) -> bool:
    return "config reload rejected" in line and word in line


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


ALIAS_BOMB = "".join(
    [f"lol0: &lol0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]\n" for i in range(1, 8)]
)


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
    ports: dict[str, int]  # camera -> its (closed) port
    bomb_reload_s: float  # SIGHUP with an alias bomb -> "config reload rejected" in the log
    reload_lines: list[str]  # the log lines of the three reloads
    web: dict[str, bytes]  # web console pages and API answers (path -> body), fetched with the token


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


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def _edgedet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgedet", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, timeout=120)


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
        ports = {name: free_port() for name, *_ in GOOD_SHAPES + [("late", "", "", [])]}
        config: dict[str, Any] = {
            "node_id": NODE,
            "state_dir": str(folder / "state"),
            "cameras": {
                "clip": {"url": str(assets.clip), "loop": True, "fps_limit": 5},
                **{name: {"url": url.format(port=ports[name])} for name, url, *_ in GOOD_SHAPES},
            },
            "model": {"path": str(DEMO_MODEL)},
            "mqtt": {"host": broker.host, "port": broker.port, "username": MQTT_USER, "password": MQTT_PASSWORD,
                     "keepalive": 10, "publish_empty": True},
            "metrics": {"port": metrics_port},  # host: the default
            "web": {"auth_token": WEB_TOKEN, "metrics_open": True},
        }
        cfg = folder / "edgedet.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        check = _edgedet("check-config", cfg)

        with open(folder / "daemon.stdout", "wb") as out, open(folder / "daemon.stderr", "wb") as err:
            proc = DaemonProcess([sys.executable, "-m", "edgedet", "--log-level", "DEBUG", "run", "-c", str(cfg)],
                                 stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=_env())
        proc.stdout_path, proc.stderr_path = folder / "daemon.stdout", folder / "daemon.stderr"
        detections = f"edgedet/{NODE}/clip/detections"
        sub.wait_for(lambda ms: sum(topic_matches(detections, m.topic) for m in ms) >= 3, 120, "3 detections")
        for cam, *_ in GOOD_SHAPES:  # a failed open, and a retry logged at DEBUG
            retry = f"DEBUG edgedet.capture: camera {cam} still down"
            wait_log_line(proc, partial(_starts, retry), f"camera {cam} to fail twice")

        # Reloads: an alias bomb (rejected at once), a new password in a URL without its scheme
        # (rejected; the error must not show it), a new camera with a new password (applied).
        reload_lines = []
        cfg.write_text(yaml.safe_dump(config, sort_keys=False) + ALIAS_BOMB)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        reload_lines.append(wait_log_line(proc, partial(_rejected, "alias bomb"), "the bomb reload rejected", 30))
        bomb_reload_s = time.monotonic() - t0
        late = {"url": f"admin:{RELOAD_BAD_PASSWORD}@127.0.0.1:{ports['late']}/cam"}
        cfg.write_text(yaml.safe_dump({**config, "cameras": {**config["cameras"], "late": late}}, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        reload_lines.append(wait_log_line(proc, partial(_rejected, "cameras.late.url"), "the bad reload", 30))
        late = {"url": f"rtsp://admin:{RELOAD_PASSWORD}@127.0.0.1:{ports['late']}/cam"}
        cfg.write_text(yaml.safe_dump({**config, "cameras": {**config["cameras"], "late": late}}, sort_keys=False))
        proc.send_signal(signal.SIGHUP)
        reload_lines.append(wait_log_line(proc, partial(_starts, "INFO edgedet.app: config reloaded"),
                                          "the good reload", 60))
        wait_log_line(proc, partial(_starts, "DEBUG edgedet.capture: camera late still down"), "camera late down")

        status, body = healthz(metrics_port)
        health = f"{status} {body}"
        metrics = metrics_text(metrics_port)
        listening = listening_addresses(metrics_port)
        web = {path: web_get(metrics_port, path) for path in WEB_PATHS}
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        sub.wait_for(lambda ms: any(m.payload == b"stopped" for m in ms), 10, "the 'stopped' status")
        yield Outputs(proc.output(), code, check.stdout + check.stderr, check.returncode, metrics, health,
                      sub.messages(), metrics_port, listening, ports, bomb_reload_s, reload_lines, web)
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


WEB_PATHS = ("/", "/static/app.js", "/openapi.json", "/api/v1/status", "/api/v1/cameras", "/api/v1/events",
             "/api/v1/session", "/api/v1/cameras/clip/latest.jpg")


def web_get(port: int, path: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {WEB_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body: bytes = resp.read()
    return body


def test_web_console_holds_no_secret(outputs: Outputs) -> None:
    assert set(outputs.web) == set(WEB_PATHS)
    assert b'"name":"door"' in outputs.web["/api/v1/cameras"] and outputs.web["/"].startswith(b"<!doctype html>")
    leaked = {path: found for path, body in outputs.web.items() if (found := leaks(body))}
    assert leaked == {}


def test_mqtt_messages_hold_no_secret(outputs: Outputs) -> None:
    topics = {m.topic for m in outputs.messages}
    assert f"edgedet/{NODE}/clip/detections" in topics and f"edgedet/{NODE}/door/status" in topics, topics
    leaked = [(m.topic, found) for m in outputs.messages if (found := leaks(m.topic) + leaks(m.payload))]
    assert leaked == []


def test_metrics_and_health_listen_on_loopback_only_by_default(outputs: Outputs) -> None:
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    assert outputs.listening_on == ["127.0.0.1"], f"port {outputs.metrics_port}: {outputs.listening_on}"


@pytest.mark.parametrize(("camera", "url", "masked", "secrets"), GOOD_SHAPES, ids=[s[0] for s in GOOD_SHAPES])
def test_every_url_shape_is_masked_in_check_config_and_the_log(outputs: Outputs, camera: str, url: str, masked: str,
                                                              secrets: list[str]) -> None:
    shown = masked.format(port=outputs.ports[camera])
    assert f"url: {shown}" in outputs.check_config, outputs.check_config
    assert shown in outputs.log, outputs.log  # the capture's display URL
    assert [s for s in secrets if s in outputs.log + outputs.check_config] == []


def test_reloads_never_show_a_secret_and_an_alias_bomb_is_refused_at_once(outputs: Outputs) -> None:
    bomb, bad, good = outputs.reload_lines
    print(f"\nalias bomb reload: SIGHUP -> rejected in {outputs.bomb_reload_s * 1000:.0f} ms")
    assert bomb.startswith("ERROR edgedet.app: config reload rejected, keeping the running config: ")
    assert re.search(r"edgedet\.yaml:[0-9]+: YAML aliases expand this value to more than 100000 values "
                     r"\(an alias bomb\?\); write the values out or use fewer aliases$", bomb), bomb
    assert outputs.bomb_reload_s < 5.0  # a generous guard: unbounded, it took tens of seconds and gigabytes
    assert f"cameras.late.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got " \
           f"'admin:***@127.0.0.1:{outputs.ports['late']}/cam')" in bad, bad
    assert good == "INFO edgedet.app: config reloaded: cameras added: late"
    assert f"rtsp://admin:***@127.0.0.1:{outputs.ports['late']}/cam" in outputs.log
    assert [s for s in (RELOAD_BAD_PASSWORD, RELOAD_PASSWORD) if s in outputs.log] == []


@dataclass(frozen=True, slots=True)
class Rejected:
    check_config: subprocess.CompletedProcess[str]
    run: subprocess.CompletedProcess[str]
    config: Path


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory, assets: Any) -> Rejected:
    """``check-config`` and ``run`` of a config whose cameras have every URL shape a config rejects."""
    folder = tmp_path_factory.mktemp("bad-urls")
    cfg = folder / "edgedet.yaml"
    cfg.write_text(yaml.safe_dump({
        "node_id": NODE,
        "state_dir": str(folder / "state"),
        "cameras": {"clip": {"url": str(assets.clip)}, **{name: {"url": url} for name, url, *_ in BAD_SHAPES}},
        "model": {"path": str(DEMO_MODEL)},
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "username": MQTT_USER, "password": MQTT_PASSWORD},
        "metrics": {"port": free_port()},
    }, sort_keys=False))
    return Rejected(_edgedet("check-config", cfg), _edgedet("run", "-c", cfg), cfg)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_rejected_url_shapes_exit_2_with_masked_errors(rejected: Rejected, command: str) -> None:
    result = rejected.check_config if command == "check-config" else rejected.run
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = [message.format(dir=rejected.config.parent) for _, _, message, _ in BAD_SHAPES]
    assert [line.split(".url: ", 1)[1] for line in lines] == expected, output
    assert leaks(output) == [], output
