"""Prometheus metrics, always built against a registry passed in (never the global one).

``Metrics(registry)`` owns every metric object; ``serve()`` starts a small HTTP server for
``/metrics`` and ``/healthz`` and returns ``(server, thread)``; ``stop_server()`` stops it.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edgedet.errors import ConfigError, EnvironmentFault

log = logging.getLogger(__name__)

#: Latency buckets for 5 ms .. 5 s stages (end to end, inference, postprocess).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
#: Finer low buckets for cheap stages (preprocess, queue wait).
FAST_BUCKETS = (0.0005, 0.001, 0.0025) + LATENCY_BUCKETS

#: ``frames_dropped{reason}`` values created at 0 for every camera.
DROP_REASONS = ("queue_full", "fps_limit")
#: ``inference_skipped{reason}`` values created at 0 for every camera (see edgedet/motion.py).
SKIP_REASONS = ("no_motion", "min_interval")
#: ``capture_errors{kind}`` values created at 0 for every camera (see capture.py).
CAPTURE_ERROR_KINDS = ("open", "read", "stall", "decode", "internal")
#: ``frame_errors{kind}`` values created at 0 for every camera (see inference.FrameErrors).
FRAME_ERROR_KINDS = ("preprocess", "postprocess", "publish", "events", "stats", "sink")
#: ``outbox_dropped{reason}`` values created at 0 (see outputs/outbox.py).
OUTBOX_DROP_REASONS = ("size", "bytes", "age", "corrupt")
#: ``outbox_dropped_by_kind{kind}`` / ``mqtt_parked{kind}`` values created at 0 (others count as "other").
OUTBOX_KINDS = ("detections", "events", "snapshot", "other")
#: ``mqtt_parked{reason}``: too_large = over mqtt.max_payload_bytes, disconnects = in flight at N disconnects.
PARK_REASONS = ("too_large", "disconnects")

HealthCheck = Callable[[], tuple[bool, Mapping[str, Any]]]


class Metrics:
    """Every edgedet metric, registered on ``registry``.

    Per-camera label sets are created at 0 by ``init_camera(name)`` (idempotent), so
    dashboards and alerts see the series before the first event.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        cam = ("camera",)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, cam, buckets=buckets, registry=registry)

        self.end_to_end = hist(
            "edgedet_end_to_end_seconds", "Capture to publish latency per frame.", LATENCY_BUCKETS
        )
        self.inference = hist("edgedet_inference_seconds", "Model forward pass time.", LATENCY_BUCKETS)
        self.preprocess = hist("edgedet_preprocess_seconds", "Letterbox/normalise time.", FAST_BUCKETS)
        self.postprocess = hist("edgedet_postprocess_seconds", "Decode + NMS time.", LATENCY_BUCKETS)
        self.queue_wait = hist(
            "edgedet_queue_wait_seconds", "Capture to inference-start wait per frame.", FAST_BUCKETS
        )

        self.frames_captured = Counter(
            "edgedet_frames_captured_total", "Frames decoded by capture.", cam, registry=registry
        )
        self.frames_processed = Counter(
            "edgedet_frames_processed_total", "Frames run through the detector.", cam, registry=registry
        )
        self.frames_dropped = Counter(
            "edgedet_frames_dropped_total",
            "Frames skipped or discarded (queue_full, fps_limit, ...).",
            ("camera", "reason"),
            registry=registry,
        )
        self.detections = Counter(
            "edgedet_detections_total", "Objects detected.", ("camera", "label"), registry=registry
        )
        self.camera_reconnects = Counter(
            "edgedet_camera_reconnects_total",
            "Reconnect attempts after a capture failure.",
            cam,
            registry=registry,
        )
        self.capture_errors = Counter(
            "edgedet_capture_errors_total",
            "Capture failures by kind (open, read, stall, decode, internal).",
            ("camera", "kind"),
            registry=registry,
        )
        self.frame_errors = Counter(
            "edgedet_frame_errors_total",
            "Frames whose processing failed at one stage and were skipped there (preprocess, postprocess, "
            "publish, events, stats, sink); the daemon goes on.",
            ("camera", "kind"),
            registry=registry,
        )
        self.mqtt_published = Counter(
            "edgedet_mqtt_published_total", "MQTT messages handed to the broker.", ("kind",),
            registry=registry,
        )
        self.mqtt_publish_failures = Counter(
            "edgedet_mqtt_publish_failures_total", "MQTT publishes that failed.", ("kind",),
            registry=registry,
        )

        self.camera_up = Gauge(
            "edgedet_camera_up", "1 while the camera delivers frames, else 0.", cam, registry=registry
        )
        self.inference_skipped = Counter(
            "edgedet_inference_skipped_total",
            "Decoded frames not sent to inference by detect.mode motion (no_motion, min_interval).",
            ("camera", "reason"), registry=registry,
        )
        self.motion_fraction = Gauge(
            "edgedet_motion_fraction", "Share of the image that moved in the last frame (detect.mode motion).", cam,
            registry=registry,
        )
        self.inference_interval = Gauge(
            "edgedet_inference_interval_seconds", "Time between the last two frames sent to inference.", cam,
            registry=registry,
        )
        self.profile_active = Gauge(
            "edgedet_profile_active", "1 for the camera's active profile ('base': its own settings), else 0.",
            ("camera", "profile"), registry=registry,
        )
        self.camera_frozen = Gauge(
            "edgedet_camera_frozen",
            "1 while the camera keeps delivering the same image (frozen encoder), else 0.",
            cam,
            registry=registry,
        )
        self.frame_age = Gauge(
            "edgedet_frame_age_seconds",
            "Age of the last frame taken for inference, at inference start.",
            cam,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "edgedet_queue_depth", "Frames waiting in the camera queue.", cam, registry=registry
        )
        self.mqtt_connected = Gauge(
            "edgedet_mqtt_connected", "1 while connected to the MQTT broker.", registry=registry
        )
        self.workers_busy = Gauge(
            "edgedet_workers_busy", "Inference workers currently processing a frame.", registry=registry
        )
        self.outbox_messages = Gauge(
            "edgedet_outbox_messages", "QoS>=1 MQTT messages in the on-disk outbox, not yet acknowledged.",
            registry=registry,
        )
        self.outbox_dropped = Counter(
            "edgedet_outbox_dropped_total",
            "Outbox messages dropped unsent, oldest first (reason: size = max_messages, age = max_age_s).",
            ("reason",),
            registry=registry,
        )
        for reason in OUTBOX_DROP_REASONS:
            self.outbox_dropped.labels(reason=reason)
        self.outbox_dropped_by_kind = Counter(
            "edgedet_outbox_dropped_by_kind_total",
            "Outbox messages dropped unsent, by reason and kind (detections go before events).",
            ("reason", "kind"), registry=registry,
        )
        self.outbox_degraded = Gauge(
            "edgedet_outbox_degraded", "1 while the outbox is held in memory (state dir not writable).",
            registry=registry,
        )
        self.outbox_corrupt = Counter(
            "edgedet_outbox_corrupt_total", "Damaged outbox files moved aside (readable rows copied over).",
            registry=registry,
        )
        self.mqtt_parked = Counter(
            "edgedet_mqtt_parked_total",
            "MQTT messages set aside unsent (reason: too_large, disconnects), kept in the outbox's parked table.",
            ("kind", "reason"), registry=registry,
        )
        for kind in OUTBOX_KINDS:
            for reason in OUTBOX_DROP_REASONS:
                self.outbox_dropped_by_kind.labels(reason=reason, kind=kind)
            for reason in PARK_REASONS:
                self.mqtt_parked.labels(kind=kind, reason=reason)
        self.events = Counter(
            "edgedet_events_total",
            "Event lifecycle messages published (type: new, update, end).",
            ("camera", "label", "type"),
            registry=registry,
        )
        self.events_active = Gauge(
            "edgedet_events_active", "1 while an event is active for the camera and label.",
            ("camera", "label"), registry=registry,
        )
        self.clip_frames_dropped = Counter(
            "edgedet_clip_frames_dropped_total",
            "Processed frames the clip recorder could not take (its queue was full); inference never waits.",
            cam, registry=registry,
        )
        self.clips_written = Counter("edgedet_clips_written_total", "Event clips written.", cam, registry=registry)
        self.build = Info("edgedet_build", "Build and runtime information.", registry=registry)

    def set_build(self, **labels: object) -> None:
        """Set ``edgedet_build_info`` labels, e.g. version, model, torch, device."""
        self.build.info({key: "" if value is None else str(value) for key, value in labels.items()})

    def init_camera(self, name: str) -> None:
        """Create every per-camera series at 0. Safe to call more than once."""
        for hist in (self.end_to_end, self.inference, self.preprocess, self.postprocess, self.queue_wait):
            hist.labels(camera=name)
        self.frames_captured.labels(camera=name)
        self.frames_processed.labels(camera=name)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera=name, reason=reason)
        self.camera_reconnects.labels(camera=name)
        for kind in CAPTURE_ERROR_KINDS:
            self.capture_errors.labels(camera=name, kind=kind)
        for kind in FRAME_ERROR_KINDS:
            self.frame_errors.labels(camera=name, kind=kind)
        self.camera_up.labels(camera=name)
        self.camera_frozen.labels(camera=name)
        for reason in SKIP_REASONS:
            self.inference_skipped.labels(camera=name, reason=reason)
        self.frame_age.labels(camera=name)
        self.queue_depth.labels(camera=name)


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # TIME_WAIT only; a live listener still gives EADDRINUSE
    allow_reuse_port = False  # never share the port with another process


def health_response(health: HealthCheck) -> tuple[int, bytes]:
    """``/healthz``: 200 + JSON when ``health()`` is ok, else 503 + JSON with a ``reason``."""
    try:
        ok, detail = health()
        body: dict[str, Any] = dict(detail)
    except Exception as exc:  # a broken check must not kill the server
        log.exception("health check raised")
        ok, body = False, {"reason": f"health check failed: {exc}"}
    if ok:
        body = {"status": "ok", **body}
    else:
        body = {"status": "unhealthy", **body}
        body.setdefault("reason", "unhealthy")
    return (200 if ok else 503), (json.dumps(body, default=str) + "\n").encode()


def _make_handler(registry: CollectorRegistry, health: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edgedet"
        sys_version = ""
        timeout = 10  # seconds per socket operation: a half-sent request does not hold a thread forever

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                self._healthz()
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _healthz(self) -> None:
            code, data = health_response(health)
            self._send(code, "application/json", data)

        def _send(self, code: int, content_type: str, data: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
            if log.isEnabledFor(logging.DEBUG):
                log.debug("metrics http %s: %s", self.address_string(), format % args)

    return Handler


def serve(
    metrics_registry: CollectorRegistry,
    host: str,
    port: int,
    health: HealthCheck,
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``GET /metrics`` and ``GET /healthz`` on ``host:port`` from a daemon thread.

    ``health()`` returns ``(ok, detail)``: 200 + JSON ``detail`` when ok, else 503 + JSON
    with a ``reason``. Port 0 picks a free port (read it from ``server.server_address``).
    Raises ``ConfigError`` when the address cannot be bound (port in use, bad host).
    """
    try:
        server = _Server((host, port), _make_handler(metrics_registry, health))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise EnvironmentFault(f"metrics.port: {host}:{port} is already in use") from exc
        raise ConfigError(f"metrics.host: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    log.info("metrics on http://%s:%s/metrics", bound_host, bound_port)
    return server, thread


def stop_server(server: ThreadingHTTPServer, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop serving, close the socket and join ``thread`` (WARNING if it is still alive)."""
    if thread.is_alive():
        server.shutdown()  # returns once serve_forever() has left its poll loop
    server.server_close()
    thread.join(timeout)
    if thread.is_alive():
        log.warning("thread %s still alive %.1f s after stop", thread.name, timeout)
