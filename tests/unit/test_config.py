"""Tests for edgedet.config: schema, defaults, every error message and line, env, masking."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path

import pytest
import yaml

from edgedet.config import (
    CameraConfig,
    Config,
    EventThresholds,
    MqttConfig,
    Polygon,
    default_client_id,
    dump_config,
    load_config,
    parse_config,
)
from edgedet.config.builder import Section, YamlValue, build_section
from edgedet.config.problems import INVALID, Ctx, Mismatch, PathT
from edgedet.errors import ConfigError
from edgedet.redact import mask_url, redact

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

CAMERA = "cameras:\n  gate:\n    url: rtsp://cam.local/stream\n"
MODEL = "model:\n  path: model.torchscript\n"
MINIMAL = CAMERA + MODEL  # 5 lines; extra top-level keys start on line 6
MARK = "# <-"


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config directory with a model and a clip; the working directory is elsewhere."""
    (tmp_path / "model.torchscript").write_bytes(b"model")
    (tmp_path / "clip.mp4").write_bytes(b"clip")
    (tmp_path / "subdir").mkdir()
    (tmp_path / "mqtt.pass").write_text("  s3cret-pw\n")
    (tmp_path / "empty.pass").write_text(" \n")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text(name)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for var in ("STATE_DIRECTORY", "EDGEDET_T_X", "EDGEDET_T_PORT", "EDGEDET_T_FLAG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def parse(text: str, base: Path, **kwargs: bool) -> Config:
    return parse_config(text, "config.yaml", base, **kwargs)


def problems(text: str, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, base)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def camera(*lines: str) -> str:
    """A config whose camera 'gate' has these lines (the first one is on line 3)."""
    return "cameras:\n  gate:\n" + "".join(f"    {line}\n" for line in lines) + MODEL


def model(*lines: str) -> str:
    """A config whose model has these lines after ``path`` (the first one is on line 6)."""
    return MINIMAL + "".join(f"  {line}\n" for line in lines)


def marked_line(text: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if MARK in row]
    return line


# --------------------------------------------------------------------------- valid configs


def test_minimal_config_gets_every_default(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "edge box.local")
    cfg = parse(MINIMAL, base)

    assert cfg.node_id == "edge-box-local"
    assert cfg.log_level == "INFO"
    assert cfg.state_dir == "/var/lib/edgedet"
    assert list(cfg.cameras) == ["gate"]
    assert cfg.cameras["gate"] == CameraConfig(url="rtsp://cam.local/stream")
    gate = cfg.cameras["gate"]
    assert (gate.enabled, gate.fps_limit, gate.transport, gate.loop, gate.realtime) == (
        True, None, "tcp", False, True)
    assert (gate.width, gate.height, gate.fourcc) == (None, None, None)
    assert (gate.stall_timeout_s, gate.queue_size, gate.kind) == (10.0, 1, "rtsp")
    m = cfg.model
    assert m.path == str(base / "model.torchscript")
    assert (m.device, m.half, m.conf, m.iou, m.classes, m.max_det) == ("cpu", False, 0.25, 0.7, None, 300)
    assert (cfg.workers.count, cfg.workers.threads_per_worker) == (None, None)
    q = cfg.mqtt
    assert (q.host, q.port, q.client_id, q.username, q.password, q.password_file, q.tls) == (
        "127.0.0.1", 1883, None, None, None, None, None)
    assert (q.topic_prefix, q.qos, q.keepalive, q.publish_empty) == ("edgedet", 1, 60, False)
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (True, "127.0.0.1", 9108)


def test_unusable_hostname_falls_back_to_edgedet(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "...")
    assert parse(MINIMAL, base).node_id == "edgedet"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/edgedet", "/run/edgedet"),
        ("/run/edgedet:/run/other", "/run/edgedet"),
        ("", "/var/lib/edgedet"),
        (None, "/var/lib/edgedet"),
    ],
)
def test_state_dir_default_follows_state_directory(
    base: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    if value is not None:
        monkeypatch.setenv("STATE_DIRECTORY", value)
    assert parse(MINIMAL, base).state_dir == expected


def test_explicit_state_dir_wins_and_relative_is_against_cwd(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/run/edgedet")
    cfg = parse(MINIMAL + "state_dir: .cache/state\n", base)
    assert cfg.state_dir == str(base / "cwd" / ".cache" / "state")


def test_full_config_values(base: Path) -> None:
    text = MINIMAL + (
        "node_id: dock_1\n"
        "log_level: debug\n"
        "workers: {count: 2, threads_per_worker: 3}\n"
        "mqtt:\n"
        "  host: broker.local\n"
        "  port: 8883\n"
        "  client_id: fixed-id\n"
        "  username: edgedet\n"
        "  password_file: mqtt.pass\n"
        "  tls: {ca: ca.pem, cert: cert.pem, key: key.pem, insecure: true}\n"
        "  topic_prefix: plant/line-1\n"
        "  qos: 0\n"
        "  keepalive: 5\n"
        "  publish_empty: true\n"
        "metrics: {enabled: false, host: 0.0.0.0, port: 0}\n"
    )
    cfg = parse(text, base)
    assert (cfg.node_id, cfg.log_level) == ("dock_1", "DEBUG")
    assert (cfg.workers.count, cfg.workers.threads_per_worker) == (2, 3)
    q = cfg.mqtt
    assert (q.host, q.port, q.client_id, q.username) == ("broker.local", 8883, "fixed-id", "edgedet")
    assert q.password == "s3cret-pw"
    assert q.password_file == str(base / "mqtt.pass")
    assert q.tls is not None
    assert (q.tls.ca, q.tls.cert, q.tls.key, q.tls.insecure) == (
        str(base / "ca.pem"), str(base / "cert.pem"), str(base / "key.pem"), True)
    assert (q.topic_prefix, q.qos, q.keepalive, q.publish_empty) == ("plant/line-1", 0, 5, True)
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (False, "0.0.0.0", 0)


def test_model_options(base: Path) -> None:
    cfg = parse(model("device: cuda:1", "half: true", "conf: 1", "iou: 0", "classes: [person, 2]",
                      "max_det: 1"), base)
    m = cfg.model
    assert (m.device, m.half, m.conf, m.iou, m.classes, m.max_det) == ("cuda:1", True, 1.0, 0.0,
                                                                     ["person", 2], 1)
    assert isinstance(m.conf, float)


@pytest.mark.parametrize(
    ("url", "expected", "kind"),
    [
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream", "rtsp"),
        ("RTSPS://user:pw@10.0.0.5:322/live", "RTSPS://user:pw@10.0.0.5:322/live", "rtsp"),
        ("http://cam.local/mjpeg", "http://cam.local/mjpeg", "http"),
        ("https://cam.local:8443/video", "https://cam.local:8443/video", "http"),
        ("/dev/video2", "/dev/video2", "device"),
        ("/dev/v4l/by-id/usb-Logitech_C920-video-index0", "/dev/v4l/by-id/usb-Logitech_C920-video-index0",
         "device"),
        ("0", 0, "device"),
        ("'3'", 3, "device"),
        ("clip.mp4", "{base}/clip.mp4", "file"),
        ("./subdir/../clip.mp4", "{base}/clip.mp4", "file"),
        ("{base}/clip.mp4", "{base}/clip.mp4", "file"),
    ],
)
def test_camera_url_forms(base: Path, url: str, expected: str | int, kind: str) -> None:
    cfg = parse(camera(f"url: {url.format(base=base)}"), base)
    gate = cfg.cameras["gate"]
    assert gate.url == (expected.format(base=base) if isinstance(expected, str) else expected)
    assert gate.kind == kind


def test_relative_paths_fall_back_to_the_working_directory(base: Path) -> None:
    (base / "cwd" / "local.mp4").write_bytes(b"x")
    (base / "cwd" / "clip.mp4").write_bytes(b"x")
    cfg = parse(camera("url: local.mp4") + "\n", base)
    assert cfg.cameras["gate"].url == str(base / "cwd" / "local.mp4")
    # The config directory comes first when both have the file.
    assert parse(camera("url: clip.mp4"), base).cameras["gate"].url == str(base / "clip.mp4")


def test_device_and_file_options(base: Path) -> None:
    text = (
        "cameras:\n"
        "  usb: {url: /dev/video0, width: 1280, height: 720, fourcc: MJPG, enabled: false}\n"
        "  clip: {url: clip.mp4, loop: true, realtime: false, queue_size: 16, fps_limit: 2.5}\n"
        "  cam: {url: 'rtsp://cam.local/x', transport: UDP, stall_timeout_s: 3}\n"
    ) + MODEL
    cams = parse(text, base).cameras
    assert (cams["usb"].width, cams["usb"].height, cams["usb"].fourcc, cams["usb"].enabled) == (
        1280, 720, "MJPG", False)
    assert (cams["clip"].loop, cams["clip"].realtime, cams["clip"].queue_size) == (True, False, 16)
    assert cams["clip"].fps_limit == 2.5
    assert (cams["cam"].transport, cams["cam"].stall_timeout_s) == ("udp", 3.0)


def test_unknown_top_level_key_without_a_close_match_lists_the_valid_keys(base: Path) -> None:
    assert problems("x-defaults: &defaults {fps_limit: 4}\n" + MINIMAL, base) == [
        "config.yaml:1: x-defaults: unknown key 'x-defaults' (valid keys: node_id, log_level, state_dir, "
        "cameras, model, workers, mqtt, metrics, events, outbox, homeassistant, web, watchdog_grace_s, location)"
    ]


def test_yaml_anchors_and_merge_keys(base: Path) -> None:
    text = (
        "cameras:\n"
        "  a: &cam {url: 'rtsp://cam.local/a', fps_limit: 4, stall_timeout_s: 5}\n"
        "  b:\n"
        "    <<: *cam\n"
        "    url: rtsp://cam.local/b\n"
    ) + MODEL
    cams = parse(text, base).cameras
    assert (cams["b"].url, cams["b"].fps_limit, cams["b"].stall_timeout_s) == ("rtsp://cam.local/b", 4.0, 5.0)
    assert cams["a"].url == "rtsp://cam.local/a"


# --------------------------------------------------------------------------- one problem each

CAMERA_ERRORS = [
    ("url: rstp://admin:hunter2@cam/1  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index "
     "(got 'rstp://admin:***@cam/1')"),
    ("url: ftp://cam.local/x  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index "
     "(got 'ftp://cam.local/x')"),
    ("url: /dev/vidoe0  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index "
     "(got '/dev/vidoe0')"),
    ("url: true  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got true)"),
    ("url: ''  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got '')"),
    ("url: [a]  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index (got a list)"),
    ("url:  " + MARK,
     "cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device index "
     "(got an empty value)"),
    ("url: clips/missing.mp4  " + MARK, "cameras.gate.url: file not found: {base}/clips/missing.mp4"),
    ("url: {base}/nope.mp4  " + MARK, "cameras.gate.url: file not found: {base}/nope.mp4"),
    ("url: subdir  " + MARK, "cameras.gate.url: not a regular file: {base}/subdir"),
    ("url: rtsp:///stream  " + MARK, "cameras.gate.url: the URL has no host (got 'rtsp:///stream')"),
    ("url: rtsp://u:p@cam:port/x  " + MARK,
     "cameras.gate.url: bad host or port in URL; percent-encode special characters in the password "
     "(got 'rtsp://u:***@cam:port/x')"),
    ("url: -1  " + MARK, "cameras.gate.url: a device index must be >= 0 (got -1)"),
    ("fps_limit: 0  " + MARK, "cameras.gate.fps_limit: must be > 0 (got 0.0)"),
    ("fps_limit: fast  " + MARK, "cameras.gate.fps_limit: expected a number (got 'fast')"),
    ("transport: sctp  " + MARK, "cameras.gate.transport: expected one of 'tcp', 'udp' (got 'sctp')"),
    ("enabled: yes please  " + MARK, "cameras.gate.enabled: expected true or false (got 'yes please')"),
    ("enabled: 1  " + MARK, "cameras.gate.enabled: expected true or false (got 1)"),
    ("enabled: 'true'  " + MARK, "cameras.gate.enabled: expected true or false (got 'true')"),
    ("queue_size: abc  " + MARK, "cameras.gate.queue_size: expected an integer (got 'abc')"),
    ("queue_size: true  " + MARK, "cameras.gate.queue_size: expected an integer (got true)"),
    ("queue_size: 1.5  " + MARK, "cameras.gate.queue_size: expected an integer (got 1.5)"),
    ("queue_size: 17  " + MARK, "cameras.gate.queue_size: must be between 1 and 16 (got 17)"),
    ("queue_size: 0  " + MARK, "cameras.gate.queue_size: must be between 1 and 16 (got 0)"),
    ("stall_timeout_s: -1  " + MARK, "cameras.gate.stall_timeout_s: must be > 0 (got -1.0)"),
    ("fsp_limit: 5  " + MARK, "cameras.gate.fsp_limit: unknown key 'fsp_limit' (did you mean 'fps_limit'?)"),
    ("loop: true  " + MARK, "cameras.gate.loop: only applies to file sources (this camera is rtsp)"),
    ("realtime: false  " + MARK, "cameras.gate.realtime: only applies to file sources (this camera is rtsp)"),
    ("width: 640  " + MARK,
     "cameras.gate.width: only applies to device (USB) cameras (this camera is rtsp)"),
]


@pytest.mark.parametrize(("line", "message"), CAMERA_ERRORS)
def test_camera_errors(base: Path, line: str, message: str) -> None:
    line = line.format(base=base)
    lines = [line] if line.startswith("url:") else ["url: rtsp://cam.local/stream", line]
    text = camera(*lines)
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: {message.format(base=base)}"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["url: /dev/video0", "fourcc: MJPEG  " + MARK],
         "cameras.gate.fourcc: must be exactly 4 characters, e.g. 'MJPG' (got 'MJPEG')"),
        (["url: /dev/video0", "height: 0  " + MARK], "cameras.gate.height: must be >= 1 (got 0)"),
        (["url: /dev/video0", "transport: udp  " + MARK],
         "cameras.gate.transport: only applies to rtsp cameras (this camera is device)"),
        (["url: clip.mp4", "fourcc: MJPG  " + MARK],
         "cameras.gate.fourcc: only applies to device (USB) cameras (this camera is file)"),
        (["enabled: true"], "cameras.gate: missing required key 'url'"),
    ],
)
def test_camera_cross_field_errors(base: Path, lines: list[str], message: str) -> None:
    text = camera(*lines)
    line = marked_line(text) if MARK in text else 2  # a missing key is reported on its section's line
    assert problems(text, base) == [f"config.yaml:{line}: {message}"]


MODEL_ERRORS = [
    ("device: gpu  " + MARK, "model.device: expected 'cpu', 'cuda' or 'cuda:N' (got 'gpu')"),
    ("device: cuda:x  " + MARK, "model.device: expected 'cpu', 'cuda' or 'cuda:N' (got 'cuda:x')"),
    ("half: true  " + MARK, "model.half: half precision needs a CUDA device"),
    ("conf: 1.5  " + MARK, "model.conf: must be between 0 and 1 (got 1.5)"),
    ("iou: -0.1  " + MARK, "model.iou: must be between 0 and 1 (got -0.1)"),
    ("iou: high  " + MARK, "model.iou: expected a number (got 'high')"),
    ("classes: []  " + MARK, "model.classes: must not be empty (remove the key to keep every class)"),
    ("classes: [person, -1]  " + MARK, "model.classes: class ids must be >= 0 (got -1)"),
    ("classes: [person, 1.5]  " + MARK, "model.classes[1]: expected a string or an integer (got 1.5)"),
    ("classes: person  " + MARK, "model.classes: expected a list (got 'person')"),
    ("max_det: 0  " + MARK, "model.max_det: must be >= 1 (got 0)"),
    ("weights: x.pt  " + MARK, "model.weights: unknown key 'weights' (valid keys: path, device, backend, half, "
                               "conf, iou, classes, max_det)"),
]


@pytest.mark.parametrize(("line", "message"), MODEL_ERRORS)
def test_model_errors(base: Path, line: str, message: str) -> None:
    text = model(line)
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: {message}"]


TOP_ERRORS = [
    ("node_id: a/b  " + MARK,
     "node_id: use only letters, digits, '_' and '-' (it is an MQTT topic level) (got 'a/b')"),
    ("node_id: 'edge+1'  " + MARK,
     "node_id: use only letters, digits, '_' and '-' (it is an MQTT topic level) (got 'edge+1')"),
    ("log_level: verbose  " + MARK,
     "log_level: expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR' (got 'VERBOSE')"),
    ("state_dir: 5  " + MARK, "state_dir: expected a directory path (got 5)"),
    ("camera: {}  " + MARK, "camera: unknown key 'camera' (did you mean 'cameras'?)"),
    ("workers: {count: 0}  " + MARK, "workers.count: must be >= 1 (got 0)"),
    ("workers: {thread_per_worker: 2}  " + MARK,
     "workers.thread_per_worker: unknown key 'thread_per_worker' (did you mean 'threads_per_worker'?)"),
    ("workers: 4  " + MARK, "workers: expected a mapping (got 4)"),
    ("mqtt: {port: 0}  " + MARK, "mqtt.port: must be between 1 and 65535 (got 0)"),
    ("mqtt: {port: '1883'}  " + MARK, "mqtt.port: expected an integer (got '1883')"),
    ("mqtt: {qos: 3}  " + MARK, "mqtt.qos: must be between 0 and 2 (got 3)"),
    ("mqtt: {keepalive: 1}  " + MARK, "mqtt.keepalive: must be >= 5 (got 1)"),
    ("mqtt: {host: ''}  " + MARK, "mqtt.host: must not be empty"),
    ("mqtt: {hots: broker}  " + MARK, "mqtt.hots: unknown key 'hots' (did you mean 'host'?)"),
    ("mqtt: {topic_prefix: /edgedet}  " + MARK,
     "mqtt.topic_prefix: must not start or end with '/' (got '/edgedet')"),
    ("mqtt: {topic_prefix: edgedet/}  " + MARK,
     "mqtt.topic_prefix: must not start or end with '/' (got 'edgedet/')"),
    ("mqtt: {topic_prefix: a/+/b}  " + MARK, "mqtt.topic_prefix: must not contain '+' or '#' (got 'a/+/b')"),
    ("mqtt: {topic_prefix: 'a/#'}  " + MARK, "mqtt.topic_prefix: must not contain '+' or '#' (got 'a/#')"),
    ("mqtt: {topic_prefix: a//b}  " + MARK,
     "mqtt.topic_prefix: must not contain an empty topic level '//' (got 'a//b')"),
    ("mqtt: {username: u, password: 123456}  " + MARK, "mqtt.password: expected a string (got an integer)"),
    ("mqtt: {password: pw}  " + MARK, "mqtt.password: a password needs a username (set mqtt.username)"),
    ("mqtt: {username: u, password: pw, password_file: mqtt.pass}  " + MARK,
     "mqtt.password_file: set password or password_file, not both"),
    ("mqtt: {username: u, password_file: nope.pass}  " + MARK,
     "mqtt.password_file: file not found: {base}/nope.pass"),
    ("mqtt: {username: u, password_file: subdir}  " + MARK,
     "mqtt.password_file: not a regular file: {base}/subdir"),
    ("mqtt: {username: u, password_file: empty.pass}  " + MARK,
     "mqtt.password_file: the file is empty: {base}/empty.pass"),
    ("mqtt: {tls: {cert: cert.pem}}  " + MARK,
     "mqtt.tls.cert: a client certificate needs its private key (set tls.key too)"),
    ("mqtt: {tls: {key: key.pem}}  " + MARK,
     "mqtt.tls.key: a private key needs its client certificate (set tls.cert too)"),
    ("mqtt: {tls: {ca: missing.pem}}  " + MARK, "mqtt.tls.ca: file not found: {base}/missing.pem"),
    ("mqtt: {tls: {insecur: true}}  " + MARK,
     "mqtt.tls.insecur: unknown key 'insecur' (did you mean 'insecure'?)"),
    ("mqtt: {tls: true}  " + MARK, "mqtt.tls: expected a mapping (got true)"),
    ("metrics: {port: 70000}  " + MARK, "metrics.port: must be between 0 and 65535 (got 70000)"),
    ("metrics: {enabled: no way}  " + MARK, "metrics.enabled: expected true or false (got 'no way')"),
]


@pytest.mark.parametrize(("line", "message"), TOP_ERRORS)
def test_top_level_and_section_errors(base: Path, line: str, message: str) -> None:
    text = MINIMAL + line + "\n"
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: {message.format(base=base)}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MODEL, ["config.yaml:1: missing required key 'cameras'"]),
        (CAMERA, ["config.yaml:1: missing required key 'model'"]),
        (CAMERA + "model: {}\n", ["config.yaml:4: model: missing required key 'path'"]),
        (CAMERA + "model:\n", ["config.yaml:4: model: missing required key 'path'"]),
        ("cameras: {}\n" + MODEL, ["config.yaml:1: cameras: at least one camera is required"]),
        ("cameras:\n  - url: /dev/video0\n" + MODEL,
         ["config.yaml:1: cameras: expected a mapping (got a list)"]),
        ("cameras:\n  gate: rtsp://cam.local/x\n" + MODEL,
         ["config.yaml:2: cameras.gate: expected a mapping (got 'rtsp://cam.local/x')"]),
        ("cameras:\n  front door: {url: 0}\n" + MODEL,
         ["config.yaml:2: cameras.front door: bad name: use only letters, digits, '_' and '-' "
          "(it is an MQTT topic level)"]),
        ("cameras:\n  a: {url: 0, enabled: false}\n  b: {url: 1, enabled: false}\n" + MODEL,
         ["config.yaml:1: cameras: every camera is disabled; enable at least one"]),
        ("cameras:\n  gate: {url: 0}\n  gate: {url: 1}\n" + MODEL,
         ["config.yaml:3: cameras.gate: duplicate key (first set on line 2)"]),
        ("model:\n  path: nope.torchscript\n" + CAMERA,
         ["config.yaml:2: model.path: file not found: {base}/nope.torchscript"]),
    ],
)
def test_structure_errors(base: Path, text: str, expected: list[str]) -> None:
    assert problems(text, base) == [e.format(base=base) for e in expected]


def test_every_problem_is_reported_at_once(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEDET_T_X", raising=False)
    text = (
        "node_id: a/b\n"                       # 1
        "cameras:\n"                           # 2
        "  gate:\n"                            # 3
        "    url: rstp://cam/1\n"              # 4
        "    fps_limt: 3\n"                    # 5
        "  dock:\n"                            # 6
        "    url: /dev/video0\n"               # 7
        "    enabled: maybe\n"                 # 8
        "model:\n"                             # 9
        "  path: model.torchscript\n"          # 10
        "  half: true\n"                       # 11
        "mqtt:\n"                              # 12
        "  port: http\n"                       # 13
        "  username: ${EDGEDET_T_X}\n"         # 14
        "metrics:\n"                           # 15
        "  prot: 9000\n"                       # 16
    )
    assert problems(text, base) == [
        "config.yaml:1: node_id: use only letters, digits, '_' and '-' (it is an MQTT topic level) "
        "(got 'a/b')",
        "config.yaml:4: cameras.gate.url: expected rtsp://, http(s)://, a file, /dev/videoN or a device "
        "index (got 'rstp://cam/1')",
        "config.yaml:5: cameras.gate.fps_limt: unknown key 'fps_limt' (did you mean 'fps_limit'?)",
        "config.yaml:8: cameras.dock.enabled: expected true or false (got 'maybe')",
        "config.yaml:11: model.half: half precision needs a CUDA device",
        "config.yaml:13: mqtt.port: expected an integer (got 'http')",
        "config.yaml:14: mqtt.username: environment variable EDGEDET_T_X is not set",
        "config.yaml:16: metrics.prot: unknown key 'prot' (did you mean 'port'?)",
    ]


# --------------------------------------------------------------------------- malformed input

EMPTY = "the file is empty (expected a mapping with 'cameras' and 'model')"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", f"config.yaml:1: {EMPTY}"),
        ("# only a comment\n", f"config.yaml:1: {EMPTY}"),
        ("- a\n- b\n", "config.yaml:1: expected a mapping at the top level (with 'cameras' and 'model'), "
                       "got a list"),
        ("\nhello\n", "config.yaml:2: expected a mapping at the top level (with 'cameras' and 'model'), "
                      "got a single value"),
        ("cameras:\n  gate: {url: 0\nmodel: x\n",
         "config.yaml:3:6: malformed YAML: expected ',' or '}', but got ':' "
         "(while parsing a flow mapping at line 2, column 9)"),
        ("a: b\n  c: d\n", "config.yaml:2:4: malformed YAML: mapping values are not allowed here"),
        ("a: 1\n---\nb: 2\n",
         "config.yaml:2:1: malformed YAML: expected a single document in the stream at line 1, column 1, "
         "but found another document"),
        ("a: \x00\n", "config.yaml: malformed YAML: unacceptable character #x0000: special characters are "
                      "not allowed in \"<unicode string>\", position 3"),
    ],
)
def test_malformed_yaml_is_one_line(base: Path, text: str, expected: str) -> None:
    assert problems(text, base) == [expected]


def test_unsupported_tag_and_bad_merge(base: Path) -> None:
    assert problems(MINIMAL + "node_id: !!python/name:os.system x\n", base) == [
        "config.yaml:6: node_id: cannot read this value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system'"
    ]
    assert problems(MINIMAL + "workers: !custom {count: 1}\n", base) == [
        "config.yaml:6: workers: unsupported YAML tag !custom"
    ]
    assert problems(MINIMAL + "workers:\n  <<: 5\n", base) == [
        "config.yaml:6: workers: bad merge key '<<': expected a mapping or list of mappings for merging, "
        "but found scalar"
    ]


def test_load_config_reads_file_and_resolves_against_its_directory(base: Path) -> None:
    path = base / "edgedet.yaml"
    path.write_text(camera("url: clip.mp4"))
    cfg = load_config(path)
    assert cfg.cameras["gate"].url == str(base / "clip.mp4")
    assert cfg.model.path == str(base / "model.torchscript")


def test_load_config_names_the_file_in_problems(base: Path) -> None:
    path = base / "edgedet.yaml"
    path.write_text(MINIMAL + "mqtt: {qos: 5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"{path}:6: mqtt.qos: must be between 0 and 2 (got 5)"]
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "{path}: config file not found"),
        ("directory", "{path}: cannot read config file: Is a directory"),
        ("latin1", "{path}: not UTF-8 text (bad byte at offset 12)"),
    ],
)
def test_load_config_unreadable_file(base: Path, setup: str, expected: str) -> None:
    path = base / "edgedet.yaml"
    if setup == "directory":
        path.mkdir()
    elif setup == "latin1":
        path.write_bytes("node_id: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [expected.format(path=path)]


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ({"EDGEDET_T_X": "bob"}, "${EDGEDET_T_X}", "bob"),
        ({"EDGEDET_T_X": "bob"}, "'${EDGEDET_T_X}'", "bob"),
        ({"EDGEDET_T_X": "bob"}, "pre-${EDGEDET_T_X}-post", "pre-bob-post"),
        ({}, "${EDGEDET_T_X:-anon}", "anon"),
        ({"EDGEDET_T_X": ""}, "${EDGEDET_T_X:-anon}", "anon"),
        ({"EDGEDET_T_X": "bob"}, "${EDGEDET_T_X:-anon}", "bob"),
        ({}, "$${EDGEDET_T_X}", "${EDGEDET_T_X}"),
        ({"EDGEDET_T_X": "bob"}, "$${EDGEDET_T_X}/${EDGEDET_T_X}", "${EDGEDET_T_X}/bob"),
        ({}, "cost $5", "cost $5"),
    ],
)
def test_env_substitution_in_strings(
    base: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], value: str, expected: str
) -> None:
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    cfg = parse(MINIMAL + f"mqtt:\n  username: {value}\n", base)
    assert cfg.mqtt.username == expected
    assert type(cfg.mqtt.username) is str


def test_env_values_fill_numbers_and_booleans(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_T_PORT", "1884")
    monkeypatch.setenv("EDGEDET_T_FLAG", "true")
    text = MINIMAL + (
        "mqtt:\n"
        "  port: ${EDGEDET_T_PORT}\n"
        "  publish_empty: ${EDGEDET_T_FLAG}\n"
        "  keepalive: ${EDGEDET_T_X:-30}\n"
    )
    cfg = parse(text, base)
    assert (cfg.mqtt.port, cfg.mqtt.publish_empty, cfg.mqtt.keepalive) == (1884, True, 30)


def test_env_problems(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_T_PORT", "18x3")
    text = MINIMAL + (
        "mqtt:\n"
        "  port: ${EDGEDET_T_PORT}\n"        # 7
        "  username: ${EDGEDET_T_X}\n"       # 8
        "  host: ${not-a-name}\n"            # 9
    )
    assert problems(text, base) == [
        "config.yaml:7: mqtt.port: expected an integer (got '18x3' from the environment)",
        "config.yaml:8: mqtt.username: environment variable EDGEDET_T_X is not set",
        "config.yaml:9: mqtt.host: bad variable reference '${not-a-name}' (use ${NAME} or ${NAME:-default})",
    ]


def test_env_secret_in_url_is_masked_in_problems(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_T_X", "hunter2")
    text = camera("url: rtps://admin:${EDGEDET_T_X}@cam.local/1")
    (problem,) = problems(text, base)
    assert "hunter2" not in problem
    assert problem.endswith("(got 'rtps://admin:***@cam.local/1' from the environment)")


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@cam.local:554/x", "rtsp://admin:***@cam.local:554/x"),
        ("rtsp://admin:p%40ss@cam.local/x?a=b", "rtsp://admin:***@cam.local/x?a=b"),
        ("rtsp://admin:pa/ss@cam.local/x", "rtsp://admin:***@cam.local/x"),
        ("http://:token@cam.local/", "http://:***@cam.local/"),
        ("rtsp://admin@cam.local/x", "rtsp://admin@cam.local/x"),
        ("rtsp://cam.local/x", "rtsp://cam.local/x"),
        ("rtsp://cam.local/live?token=abc123&ch=1", "rtsp://cam.local/live?token=***&ch=1"),
        ("http://u:p@cam/x?Password=zz#frag", "http://u:***@cam/x?Password=***#frag"),
        ("/var/clips/a:b@c.mp4", "/var/clips/a:b@c.mp4"),
        ("", ""),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def _secret_config(base: Path) -> Config:
    text = (
        "cameras:\n"
        "  gate: {url: 'rtsp://admin:hunter2@cam.local/1'}\n"
        "  yard: {url: 'rtsp://viewer:p%40ss@cam.local/2'}\n"
        "model: {path: model.torchscript}\n"
        "mqtt: {username: edgedet, password: brokerpw}\n"
    )
    return parse(text, base)


def test_to_dict_dump_and_repr_hide_secrets(base: Path) -> None:
    cfg = _secret_config(base)
    masked = cfg.to_dict()
    assert masked["mqtt"]["password"] == "***"
    assert masked["cameras"]["gate"]["url"] == "rtsp://admin:***@cam.local/1"
    for text in (str(masked), dump_config(cfg), repr(cfg), repr(cfg.mqtt)):
        for secret in ("hunter2", "brokerpw", "p%40ss"):
            assert secret not in text
    assert "admin:***@" in dump_config(cfg)
    plain = cfg.to_dict(masked=False)
    assert plain["mqtt"]["password"] == "brokerpw"
    assert plain["cameras"]["gate"]["url"] == "rtsp://admin:hunter2@cam.local/1"


def test_password_file_content_is_never_shown(base: Path) -> None:
    cfg = parse(MINIMAL + "mqtt: {username: u, password_file: mqtt.pass}\n", base)
    assert cfg.mqtt.password == "s3cret-pw"
    for masked in (True, False):
        data = cfg.to_dict(masked=masked)
        assert data["mqtt"]["password"] is None
        assert data["mqtt"]["password_file"] == str(base / "mqtt.pass")
        assert "s3cret-pw" not in dump_config(cfg, masked=masked)
    assert "s3cret-pw" not in repr(cfg)
    assert cfg.secrets() == ["s3cret-pw"]


def test_dump_is_plain_yaml_that_loads_back_to_the_same_config(base: Path) -> None:
    cfg = _secret_config(base)
    text = dump_config(cfg, masked=False)
    assert list(yaml.safe_load(text)) == ["node_id", "log_level", "state_dir", "cameras", "model",
                                          "workers", "mqtt", "metrics", "events", "outbox", "homeassistant",
                                          "web", "watchdog_grace_s", "location"]
    assert parse(text, base) == cfg
    assert parse_config(dump_config(cfg), "dump").mqtt.password == "***"


def test_secrets_and_redact(base: Path) -> None:
    cfg = _secret_config(base)
    assert cfg.secrets() == ["brokerpw", "hunter2", "p%40ss", "p@ss"]
    line = "open rtsp://admin:hunter2@cam.local/1 failed; auth brokerpw; p@ss"
    assert redact(line, cfg.secrets()) == "open rtsp://admin:***@cam.local/1 failed; auth ***; ***"
    assert redact("abc", ["", "b"]) == "a***c"
    assert redact("secret secretive", ["secret", "secretive"]) == "*** ***"


def test_default_client_id() -> None:
    first, second = default_client_id("dock-1"), default_client_id("dock-1")
    assert re.fullmatch(r"edgedet-dock-1-[0-9a-f]{8}", first)
    assert first != second


def test_config_is_frozen(base: Path) -> None:
    cfg = parse(MINIMAL, base)
    with pytest.raises(AttributeError):
        cfg.node_id = "other"  # type: ignore[misc]
    assert isinstance(cfg.mqtt, MqttConfig)


# --------------------------------------------------------------------------- events, zones and masks


def test_events_defaults(base: Path) -> None:
    cfg = parse(MINIMAL, base)
    ev = cfg.events
    assert (ev.enabled, ev.labels) == (True, {})
    d = ev.default
    assert (d.confirm_frames, d.window_frames, d.min_score, d.min_area, d.clear_after_s, d.update_interval_s) == (
        3, 5, 0.5, 0.0, 10.0, 5.0)
    s = ev.snapshots
    assert (s.enabled, s.keep, s.max_mb, s.crop) == (True, 200, 200.0, False)
    assert ev.thresholds("person") == d
    gate = cfg.cameras["gate"]
    assert (gate.zones, gate.masks) == ({}, [])


def test_events_zones_and_masks_values(base: Path) -> None:
    text = (
        "cameras:\n"
        "  ridge:\n"
        "    url: rtsp://cam.local/ridge\n"
        "    zones: {valley: [[0.0, 0.4], [1.0, 0.4], [1.0, 1.0], [0.0, 1.0]], gate-2: [[0, 0], [640, 0], [0, 1]]}\n"
        "    masks: [[[0.8, 0.0], [1.0, 0.0], [1.0, 0.1], [0.8, 0.1]]]\n"
        + MODEL +
        "events:\n"
        "  enabled: false\n"
        "  default: {confirm_frames: 2, window_frames: 4, min_score: 0.4, min_area: 0.01, clear_after_s: 30,\n"
        "            update_interval_s: 0}\n"
        "  labels: {smoke: {min_score: 0.6, confirm_frames: 4}, traffic light: {clear_after_s: 5}, fire: null}\n"
        "  snapshots: {enabled: false, keep: 5, max_mb: 1.5, crop: true}\n"
    )
    cfg = parse(text, base)
    ridge = cfg.cameras["ridge"]
    assert list(ridge.zones) == ["valley", "gate-2"]
    valley, gate = ridge.zones["valley"], ridge.zones["gate-2"]
    assert valley == Polygon(((0.0, 0.4), (1.0, 0.4), (1.0, 1.0), (0.0, 1.0)), pixels=False)
    assert gate == Polygon(((0.0, 0.0), (640.0, 0.0), (0.0, 1.0)), pixels=True)
    assert all(isinstance(v, float) for point in gate.points for v in point)
    assert ridge.masks == [Polygon(((0.8, 0.0), (1.0, 0.0), (1.0, 0.1), (0.8, 0.1)), pixels=False)]
    ev = cfg.events
    assert ev.enabled is False
    assert ev.default == EventThresholds(confirm_frames=2, window_frames=4, min_score=0.4, min_area=0.01,
                                         clear_after_s=30.0, update_interval_s=0.0)
    assert ev.thresholds("smoke") == EventThresholds(confirm_frames=4, window_frames=4, min_score=0.6,
                                                     min_area=0.01, clear_after_s=30.0, update_interval_s=0.0)
    assert ev.thresholds("traffic light").clear_after_s == 5.0
    assert ev.thresholds("fire") == ev.thresholds("person") == ev.default
    assert (ev.snapshots.enabled, ev.snapshots.keep, ev.snapshots.max_mb, ev.snapshots.crop) == (
        False, 5, 1.5, True)
    # the dump writes polygons back as point lists and only the overrides that are set
    dumped = yaml.safe_load(dump_config(cfg))
    assert dumped["cameras"]["ridge"]["zones"]["valley"] == [[0.0, 0.4], [1.0, 0.4], [1.0, 1.0], [0.0, 1.0]]
    assert dumped["events"]["labels"] == {"smoke": {"confirm_frames": 4, "min_score": 0.6},
                                          "traffic light": {"clear_after_s": 5.0}, "fire": {}}
    assert parse(dump_config(cfg), base) == cfg


def test_env_values_fill_polygon_coordinates(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDET_T_X", "0.25")
    cfg = parse(camera("url: 0", "zones: {a: [[0, 0], ['${EDGEDET_T_X}', 0], [0, 1]]}"), base)
    assert cfg.cameras["gate"].zones["a"].points[1] == (0.25, 0.0)


ZONE_ERRORS = [
    ("zones: {bad zone: [[0, 0], [1, 0], [1, 1]]}  " + MARK,
     "cameras.gate.zones.bad zone: bad name: use only letters, digits, '_' and '-' (it is an MQTT topic level)"),
    ("zones: {a: [[0, 0], [1, 1]]}  " + MARK, "cameras.gate.zones.a: a polygon needs at least 3 points (got 2)"),
    ("zones: {a: [[0, 0], [1, 1], [2, 2]]}  " + MARK,
     "cameras.gate.zones.a: the polygon has no area (its points are on one line)"),
    ("zones: {a: [[0, 0], [1, x], [0, 1]]}  " + MARK, "cameras.gate.zones.a[1][1]: expected a number (got 'x')"),
    ("zones: {a: [[0, 0], [1], [0, 1]]}  " + MARK,
     "cameras.gate.zones.a[1]: expected a point [x, y] (got 1 value)"),
    ("zones: {a: [[0, 0], [1, 0, 0], [0, 1]]}  " + MARK,
     "cameras.gate.zones.a[1]: expected a point [x, y] (got 3 values)"),
    ("zones: {a: [[0, 0], 5, [0, 1]]}  " + MARK, "cameras.gate.zones.a[1]: expected a point [x, y] (got 5)"),
    ("zones: {a: [[0, 0], [true, 0], [0, 1]]}  " + MARK,
     "cameras.gate.zones.a[1][0]: expected a number (got true)"),
    ("zones: {a: [[0, 0], [-0.5, 0], [0, 1]]}  " + MARK,
     "cameras.gate.zones.a[1][0]: coordinates must be >= 0 (got -0.5)"),
    ("zones: {a: 5}  " + MARK, "cameras.gate.zones.a: expected a list of [x, y] points (got 5)"),
    ("zones: [[0, 0], [1, 0], [0, 1]]  " + MARK, "cameras.gate.zones: expected a mapping (got a list)"),
    ("masks: [[[0, 0], [1, 0]]]  " + MARK, "cameras.gate.masks[0]: a polygon needs at least 3 points (got 2)"),
    ("masks: {a: [[0, 0], [1, 0], [0, 1]]}  " + MARK, "cameras.gate.masks: expected a list (got a mapping)"),
    ("zone: {}  " + MARK, "cameras.gate.zone: unknown key 'zone' (did you mean 'zones'?)"),
]


@pytest.mark.parametrize(("line", "message"), ZONE_ERRORS)
def test_zone_and_mask_errors(base: Path, line: str, message: str) -> None:
    text = camera("url: rtsp://cam.local/stream", line)
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: {message}"]


def test_polygon_point_problems_are_reported_on_their_own_lines(base: Path) -> None:
    text = camera(
        "url: 0",
        "zones:",
        "  a:",
        "    - [0, 0]",
        "    - [1, x]  " + MARK,
        "    - [0, 1]",
    )
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: cameras.gate.zones.a[1][1]: "
                                    "expected a number (got 'x')"]


EVENT_ERRORS = [
    ("events: {enabled: maybe}  " + MARK, "events.enabled: expected true or false (got 'maybe')"),
    ("events: {enable: true}  " + MARK, "events.enable: unknown key 'enable' (did you mean 'enabled'?)"),
    ("events: {default: {confirm_frames: 0}}  " + MARK, "events.default.confirm_frames: must be >= 1 (got 0)"),
    ("events: {default: {window_frames: 0}}  " + MARK, "events.default.window_frames: must be >= 1 (got 0)"),
    ("events: {default: {confirm_frames: 6}}  " + MARK,
     "events.default.confirm_frames: confirm_frames (6) must be <= window_frames (5)"),
    ("events: {default: {min_score: 1.5}}  " + MARK, "events.default.min_score: must be between 0 and 1 (got 1.5)"),
    ("events: {default: {min_area: -0.1}}  " + MARK, "events.default.min_area: must be between 0 and 1 (got -0.1)"),
    ("events: {default: {clear_after_s: 0}}  " + MARK, "events.default.clear_after_s: must be > 0 (got 0.0)"),
    ("events: {default: {update_interval_s: -1}}  " + MARK,
     "events.default.update_interval_s: must be >= 0 (got -1.0)"),
    ("events: {default: {confirm_frame: 2}}  " + MARK,  # 'confirm' is a key since issue 14 (confirm: tube)
     "events.default.confirm_frame: unknown key 'confirm_frame' (did you mean 'confirm_frames'?)"),
    ("events: {default: {confirm: 2}}  " + MARK, "events.default.confirm: expected one of 'frames', 'tube' (got 2)"),
    ("events: {labels: {smoke: {min_score: 2}}}  " + MARK,
     "events.labels.smoke.min_score: must be between 0 and 1 (got 2.0)"),
    ("events: {labels: {smoke: {confirm_frames: 6}}}  " + MARK,
     "events.labels.smoke.confirm_frames: confirm_frames (6) must be <= window_frames (5)"),
    ("events: {labels: {smoke: {window_frames: 2}}}  " + MARK,
     "events.labels.smoke.window_frames: confirm_frames (3) must be <= window_frames (2)"),
    ("events: {labels: {smoke: {min_scor: 0.6}}}  " + MARK,
     "events.labels.smoke.min_scor: unknown key 'min_scor' (did you mean 'min_score'?)"),
    ("events: {labels: {smoke: 0.6}}  " + MARK, "events.labels.smoke: expected a mapping (got 0.6)"),
    ("events: {labels: {a/b: {}}}  " + MARK,
     "events.labels.a/b: bad label: must not be empty or contain '/', '+' or '#' (it is an MQTT topic level)"),
    ("events: {labels: [smoke]}  " + MARK, "events.labels: expected a mapping (got a list)"),
    ("events: {snapshots: {keep: 0}}  " + MARK, "events.snapshots.keep: must be >= 1 (got 0)"),
    ("events: {snapshots: {max_mb: 0}}  " + MARK, "events.snapshots.max_mb: must be > 0 (got 0.0)"),
    ("events: {snapshots: {crop: 1}}  " + MARK, "events.snapshots.crop: expected true or false (got 1)"),
    ("events: {snapshot: {}}  " + MARK, "events.snapshot: unknown key 'snapshot' (did you mean 'snapshots'?)"),
    ("events: 5  " + MARK, "events: expected a mapping (got 5)"),
]


@pytest.mark.parametrize(("line", "message"), EVENT_ERRORS)
def test_events_errors(base: Path, line: str, message: str) -> None:
    text = MINIMAL + line + "\n"
    assert problems(text, base) == [f"config.yaml:{marked_line(text)}: {message}"]


def test_event_problems_are_reported_at_once_with_their_lines(base: Path) -> None:
    text = MINIMAL + (
        "events:\n"                         # 6
        "  default:\n"                      # 7
        "    min_score: 2\n"                # 8
        "  labels:\n"                       # 9
        "    smoke:\n"                      # 10
        "      confirm_frames: 9\n"         # 11
        "    fire:\n"                       # 12
        "      clear_after_s: never\n"      # 13
        "  snapshots:\n"                    # 14
        "    keep: -1\n"                    # 15
    )
    assert problems(text, base) == [
        "config.yaml:8: events.default.min_score: must be between 0 and 1 (got 2.0)",
        "config.yaml:13: events.labels.fire.clear_after_s: expected a number (got 'never')",
        "config.yaml:15: events.snapshots.keep: must be >= 1 (got -1)",
    ]
    fixed = text.replace("min_score: 2", "min_score: 0.5").replace("never", "5").replace("-1", "1")
    assert problems(fixed, base) == [
        "config.yaml:11: events.labels.smoke.confirm_frames: confirm_frames (9) must be <= window_frames (5)"]


def test_example_config_events_and_zones(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PASS", "campw")
    monkeypatch.setenv("MQTT_PASSWORD", "mqttpw")
    cfg = load_config(CONFIG_DIR / "edgedet.example.yaml", check_files=False)
    assert cfg.events.enabled is True
    assert cfg.events.thresholds("smoke").min_score > cfg.events.thresholds("person").min_score
    gate = cfg.cameras["gate"]
    assert gate.zones and gate.masks
    assert any(p.pixels for p in gate.zones.values()) and any(not p.pixels for p in gate.zones.values())


# --------------------------------------------------------------------------- shipped configs


def test_example_config_loads(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PASS", "campw")
    monkeypatch.setenv("MQTT_PASSWORD", "mqttpw")
    cfg = load_config(CONFIG_DIR / "edgedet.example.yaml", check_files=False)
    assert cfg.node_id == "loading-dock-01"
    kinds = {name: (cam.kind, cam.enabled) for name, cam in cfg.cameras.items()}
    assert kinds == {"gate": ("rtsp", True), "hillside": ("rtsp", True), "bench": ("device", False),
                     "replay": ("file", True)}
    hill = cfg.cameras["hillside"]
    assert hill.detect.mode == "motion" and list(hill.profiles) == ["ir_night", "dusk", "maintenance"]
    assert cfg.location is not None and cfg.location.timezone == "Europe/Paris"
    assert cfg.cameras["gate"].url == "rtsp://viewer:campw@192.168.10.21:554/Streaming/Channels/102"
    assert cfg.mqtt.password == "mqttpw"
    assert cfg.mqtt.tls is not None
    assert sorted(cfg.secrets()) == ["campw", "mqttpw"]
    assert "campw" not in dump_config(cfg) and "mqttpw" not in dump_config(cfg)


def test_example_config_needs_its_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAM_PASS", raising=False)
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "edgedet.example.yaml", check_files=False)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "cameras.gate.url: environment variable CAM_PASS is not set",
        "mqtt.password: environment variable MQTT_PASSWORD is not set",
    ]


def test_demo_config_loads_with_files_in_the_working_directory(base: Path) -> None:
    cwd = Path.cwd()
    (cwd / ".cache" / "demo").mkdir(parents=True)
    (cwd / ".cache" / "demo" / "demo.mp4").write_bytes(b"x")
    (cwd / "models").mkdir()
    (cwd / "models" / "demo.torchscript").write_bytes(b"x")
    cfg = load_config(os.path.relpath(CONFIG_DIR / "demo.yaml"))
    assert cfg.node_id == "demo"
    assert list(cfg.cameras) == ["demo"]
    demo = cfg.cameras["demo"]
    assert (demo.url, demo.kind, demo.loop, demo.realtime) == (str(cwd / ".cache/demo/demo.mp4"), "file",
                                                               True, True)
    assert cfg.model.path == str(cwd / "models" / "demo.torchscript")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.metrics.port) == ("127.0.0.1", 1883, 9108)
    assert cfg.state_dir == str(cwd / ".cache" / "state")


def test_demo_config_without_files_needs_check_files_off(base: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "demo.yaml")
    assert len(info.value.problems) == 2
    assert all("file not found" in p for p in info.value.problems)
    assert load_config(CONFIG_DIR / "demo.yaml", check_files=False).cameras["demo"].loop is True


def test_url_query_secrets_are_scrubbed_from_logs() -> None:
    from edgedet.redact import url_secrets

    assert sorted(url_secrets("rtsp://u:pw@cam/x?token=tk&key=k2&ch=1")) == ["k2", "pw", "tk"]


# --------------------------------------------------------------------------- the generic builder


@dataclasses.dataclass(frozen=True, slots=True)
class _Span(YamlValue):
    """A value type the builder has never heard of: ``"low..high"``."""

    low: int
    high: int

    @classmethod
    def from_yaml(cls, value: object, path: PathT, ctx: Ctx) -> object:
        if not isinstance(value, str) or ".." not in value:
            raise Mismatch("a span 'low..high'", value)
        low, high = value.split("..", 1)
        return cls(int(low), int(high))

    def to_plain(self) -> str:
        return f"{self.low}..{self.high}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class _Toy(Section):
    """A section the builder has never heard of, with a value type and a finish hook."""

    spans: dict[str, _Span] = dataclasses.field(default_factory=dict)
    total: int = 0

    def finish(self, ctx: Ctx, path: PathT) -> object:
        if not self.spans:
            ctx.add((*path, "spans"), "needs a span")
            return INVALID
        return dataclasses.replace(self, total=sum(s.high - s.low for s in self.spans.values()))


def test_builder_uses_the_hooks_of_any_section_and_value_type() -> None:
    ctx = Ctx(name="toy.yaml", base_dir=None, check_files=False)
    toy = build_section(_Toy, {"spans": {"a": "1..4", "b": "2..3"}}, (), ctx)
    assert ctx.problems == []
    assert toy.total == 4 and toy.spans["a"] == _Span(1, 4)
    assert toy.to_dict() == {"spans": {"a": "1..4", "b": "2..3"}, "total": 4}

    ctx = Ctx(name="toy.yaml", base_dir=None, check_files=False)
    assert build_section(_Toy, {"spans": {"a": 5, "b/c": "1..2"}, "totl": 1}, (), ctx) is INVALID
    assert ctx.rendered() == [
        "toy.yaml:1: totl: unknown key 'totl' (did you mean 'total'?)",
        "toy.yaml:1: spans.a: expected a span 'low..high' (got 5)",
        "toy.yaml:1: spans.b/c: bad name: use only letters, digits, '_' and '-' (it is an MQTT topic level)",
    ]

    ctx = Ctx(name="toy.yaml", base_dir=None, check_files=False)
    assert build_section(_Toy, {}, ("toy",), ctx) is INVALID
    assert ctx.rendered() == ["toy.yaml:1: toy.spans: needs a span"]
