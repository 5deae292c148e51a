from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgedet.errors import EdgedetError, EnvironmentFault
from edgedet.metrics import Metrics, serve, stop_server


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.mark.parametrize(
    ("sample", "labels"),
    [
        ("edgedet_frames_captured_total", {"camera": "gate"}),
        ("edgedet_frames_processed_total", {"camera": "gate"}),
        ("edgedet_frames_dropped_total", {"camera": "gate", "reason": "queue_full"}),
        ("edgedet_frames_dropped_total", {"camera": "gate", "reason": "fps_limit"}),
        ("edgedet_camera_reconnects_total", {"camera": "gate"}),
        ("edgedet_capture_errors_total", {"camera": "gate", "kind": "open"}),
        ("edgedet_capture_errors_total", {"camera": "gate", "kind": "stall"}),
        ("edgedet_camera_up", {"camera": "gate"}),
        ("edgedet_camera_frozen", {"camera": "gate"}),
        ("edgedet_frame_age_seconds", {"camera": "gate"}),
        ("edgedet_queue_depth", {"camera": "gate"}),
        ("edgedet_end_to_end_seconds_count", {"camera": "gate"}),
        ("edgedet_inference_seconds_count", {"camera": "gate"}),
        ("edgedet_preprocess_seconds_count", {"camera": "gate"}),
        ("edgedet_postprocess_seconds_count", {"camera": "gate"}),
        ("edgedet_queue_wait_seconds_count", {"camera": "gate"}),
        ("edgedet_mqtt_connected", {}),
        ("edgedet_workers_busy", {}),
    ],
)
def test_init_camera_creates_series_at_zero(registry: CollectorRegistry, sample: str, labels: dict) -> None:
    metrics = Metrics(registry)
    metrics.init_camera("gate")
    metrics.init_camera("gate")  # idempotent
    assert registry.get_sample_value(sample, labels) == 0.0


def test_counters_and_histograms_record(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.detections.labels(camera="gate", label="person").inc(2)
    metrics.mqtt_published.labels(kind="event").inc()
    metrics.mqtt_publish_failures.labels(kind="event").inc()
    metrics.end_to_end.labels(camera="gate").observe(0.04)
    assert registry.get_sample_value("edgedet_detections_total", {"camera": "gate", "label": "person"}) == 2
    assert registry.get_sample_value("edgedet_mqtt_published_total", {"kind": "event"}) == 1
    assert registry.get_sample_value("edgedet_mqtt_publish_failures_total", {"kind": "event"}) == 1
    bucket = {"camera": "gate", "le": "0.05"}
    assert registry.get_sample_value("edgedet_end_to_end_seconds_bucket", bucket) == 1
    below = {"camera": "gate", "le": "0.03"}
    assert registry.get_sample_value("edgedet_end_to_end_seconds_bucket", below) == 0
    metrics.preprocess.labels(camera="gate").observe(0.0008)  # finer low buckets
    pre = "edgedet_preprocess_seconds_bucket"
    assert registry.get_sample_value(pre, {"camera": "gate", "le": "0.0005"}) == 0
    assert registry.get_sample_value(pre, {"camera": "gate", "le": "0.001"}) == 1


def test_two_registries_do_not_clash() -> None:
    Metrics(CollectorRegistry())
    Metrics(CollectorRegistry())  # no "Duplicated timeseries" error: nothing global


def test_set_build(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry)
    metrics.set_build(version="0.1.0", model="yolov8n.torchscript", torch="2.5.1", device="cpu")
    labels = {"version": "0.1.0", "model": "yolov8n.torchscript", "torch": "2.5.1", "device": "cpu"}
    assert registry.get_sample_value("edgedet_build_info", labels) == 1


class _Health:
    def __init__(self) -> None:
        self.result: tuple[bool, dict] = (True, {"cameras_up": 2})

    def __call__(self) -> tuple[bool, dict]:
        return self.result


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[tuple[str, _Health]]:
    metrics = Metrics(registry)
    metrics.init_camera("gate")
    metrics.frames_captured.labels(camera="gate").inc(3)
    health = _Health()
    srv, thread = serve(registry, "127.0.0.1", 0, health)
    assert thread.name == "metrics-http"
    host, port = "127.0.0.1", srv.server_address[1]
    yield f"http://{host}:{port}", health
    stop_server(srv, thread, timeout=5)
    assert not thread.is_alive()


def test_serve_metrics(server: tuple[str, _Health]) -> None:
    base, _ = server
    status, ctype, body = _get(base + "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    assert b'edgedet_frames_captured_total{camera="gate"} 3.0' in body


@pytest.mark.parametrize(
    ("result", "status", "expected"),
    [
        ((True, {"cameras_up": 2}), 200, {"status": "ok", "cameras_up": 2}),
        ((False, {"reason": "no frames from gate for 30 s"}), 503,
         {"status": "unhealthy", "reason": "no frames from gate for 30 s"}),
        ((False, {}), 503, {"status": "unhealthy", "reason": "unhealthy"}),
    ],
)
def test_serve_healthz(server: tuple[str, _Health], result: tuple, status: int, expected: dict) -> None:
    base, health = server
    health.result = result
    got_status, ctype, body = _get(base + "/healthz")
    assert (got_status, ctype) == (status, "application/json")
    assert json.loads(body) == expected


def test_healthz_check_raising_is_503(registry: CollectorRegistry) -> None:
    def broken() -> tuple[bool, dict]:
        raise RuntimeError("boom")

    srv, thread = serve(registry, "127.0.0.1", 0, broken)
    try:
        host, port = "127.0.0.1", srv.server_address[1]
        status, _, body = _get(f"http://{host}:{port}/healthz")
    finally:
        stop_server(srv, thread)
    assert status == 503
    assert json.loads(body)["reason"] == "health check failed: boom"


def test_unknown_path_is_404_and_not_logged_to_stderr(
    server: tuple[str, _Health], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = server
    with caplog.at_level(logging.DEBUG, logger="edgedet.metrics"):
        status, _, _ = _get(base + "/nope")
        _get(base + "/metrics")
    assert status == 404
    assert capsys.readouterr().err == ""
    assert any("GET /nope" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_port_in_use_is_an_environment_fault_that_systemd_restarts(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(EnvironmentFault) as info:
            serve(registry, "127.0.0.1", port, lambda: (True, {}))
    assert str(info.value) == f"metrics.port: 127.0.0.1:{port} is already in use"
    assert isinstance(info.value, EdgedetError) and info.value.exit_code == 75


def test_stop_server_is_prompt(registry: CollectorRegistry) -> None:
    srv, thread = serve(registry, "127.0.0.1", 0, lambda: (True, {}))
    stop_server(srv, thread, timeout=5)
    assert not thread.is_alive()
