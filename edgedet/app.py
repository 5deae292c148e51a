"""Wiring only: metrics -> publisher -> inference -> capture; stop in reverse.

``run(cfg)`` returns the process exit code: 0 after a clean stop (signal, or every file camera
ended and drained), 1 when a worker crashed.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from edgedet import __version__
from edgedet.capture import CaptureWorker, OpenCvSource
from edgedet.config import CameraConfig, Config, default_client_id, mask_url
from edgedet.errors import ConfigError
from edgedet.framequeue import FrameHub
from edgedet.inference import DecodeOptions, InferenceWorker, thread_layout
from edgedet.metrics import Metrics, serve, stop_server
from edgedet.model import TorchScriptDetector, set_torch_threads, torch_version
from edgedet.publish import MqttPublisher
from edgedet.types import Detections, Frame

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 2.0


class FlowTracker:
    """When each camera last produced a processed frame: feeds /healthz and frame-age gauges."""

    def __init__(self, cameras: dict[str, CameraConfig]) -> None:
        self._cameras = cameras
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def seen(self, camera: str, t_mono_ns: int) -> None:
        with self._lock:
            if t_mono_ns > self._last.get(camera, 0):
                self._last[camera] = t_mono_ns

    def age_s(self, camera: str) -> float:
        with self._lock:
            last = self._last.get(camera)
        return float("nan") if last is None else (time.monotonic_ns() - last) / 1e9

    def stale(self, ended: set[str]) -> list[str]:
        """Problems: cameras without a processed frame within their stall timeout."""
        problems = []
        for name, cam in self._cameras.items():
            if name in ended:
                continue
            age = self.age_s(name)
            if age != age:  # NaN: nothing yet
                problems.append(f"camera {name}: no frame yet")
            elif age > cam.stall_timeout_s:
                problems.append(f"camera {name}: last frame {age:.1f}s ago")
        return problems


def _class_ids(cfg: Config, names: tuple[str, ...]) -> list[int] | None:
    if cfg.model.classes is None:
        return None
    ids: list[int] = []
    for item in cfg.model.classes:
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise ConfigError(f"model.classes: class id {item} out of range (model has {len(names)} classes)")
            ids.append(item)
        elif item in names:
            ids.append(names.index(item))
        else:
            raise ConfigError(f"model.classes: unknown label {item!r} (model labels: {', '.join(names)})")
    return ids


def _source_factory(cam: CameraConfig) -> Any:
    read_timeout = min(cam.stall_timeout_s, 10.0)
    return lambda: OpenCvSource(
        cam.url,
        cam.kind,
        transport=cam.transport,
        width=cam.width,
        height=cam.height,
        fourcc=cam.fourcc,
        open_timeout_s=10.0,
        read_timeout_s=read_timeout,
        display_url=mask_url(cam.url) if isinstance(cam.url, str) else str(cam.url),
    )


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for t in threads:
        if t.is_alive():
            log.warning("thread %s did not stop within %.1fs", t.name, timeout)


def run(cfg: Config, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    cameras = {name: cam for name, cam in cfg.cameras.items() if cam.enabled}
    with _signals(stop):
        count, threads = thread_layout(None, cfg.workers.count, cfg.workers.threads_per_worker)
        set_torch_threads(threads)
        detector = TorchScriptDetector(cfg.model.path, device=cfg.model.device, half=cfg.model.half or None)
        info = detector.info
        options = DecodeOptions(
            conf=cfg.model.conf, iou=cfg.model.iou, classes=_class_ids(cfg, info.names), max_det=cfg.model.max_det
        )

        registry = CollectorRegistry()
        metrics = Metrics(registry)
        metrics.set_build(version=__version__, model=info.name, torch=torch_version(), device=detector.device)
        flow = FlowTracker(cameras)
        hub = FrameHub(stop, metrics)
        queues = {}
        for name, cam in cameras.items():
            backpressure = cam.kind == "file" and not cam.realtime
            queues[name] = hub.add_camera(name, maxsize=cam.queue_size, backpressure=backpressure)
            metrics.frame_age.labels(camera=name).set_function(lambda n=name: flow.age_s(n))

        publisher = MqttPublisher(
            cfg.mqtt, cfg.node_id, list(cameras), metrics, client_id=cfg.mqtt.client_id or default_client_id(cfg.node_id)
        )

        def health() -> tuple[bool, dict[str, Any]]:
            ended = {n for n, q in queues.items() if q.closed}
            problems = flow.stale(ended)
            if not publisher.connected:
                problems.append(f"MQTT broker {cfg.mqtt.host}:{cfg.mqtt.port} not connected")
            body: dict[str, Any] = {
                "status": "ok" if not problems else "unhealthy",
                "mqtt_connected": publisher.connected,
                "cameras": {
                    n: {"ended": n in ended, "last_frame_age_s": _round(flow.age_s(n))} for n in cameras
                },
            }
            if problems:
                body["reason"] = "; ".join(problems)
            return not problems, body

        server = None
        if cfg.metrics.enabled:
            server = serve(registry, cfg.metrics.host, cfg.metrics.port, health)

        def sink(dets: Detections, frame: Frame) -> None:
            publisher.publish_detections(dets)
            now = time.monotonic_ns()
            metrics.end_to_end.labels(camera=dets.camera).observe((now - dets.t_mono_ns) / 1e9)
            flow.seen(dets.camera, dets.t_mono_ns)

        publisher.start()
        workers = [InferenceWorker(i, hub, detector, stop, sink, metrics, options) for i in range(count)]
        for w in workers:
            w.start()
        captures = [
            CaptureWorker(
                name,
                _source_factory(cam),
                queues[name],
                stop,
                metrics,
                fps_limit=cam.fps_limit,
                loop=cam.loop,
                realtime=cam.realtime,
                stall_timeout_s=cam.stall_timeout_s,
                on_state=publisher.set_camera_status,
            )
            for name, cam in cameras.items()
        ]
        for c in captures:
            c.start()
        log.info(
            "edgedet %s running: %d camera(s), %d worker(s) x %d torch thread(s), model %s %s on %s",
            __version__, len(cameras), count, threads, info.name,
            "x".join(map(str, info.imgsz)), detector.device,
        )

        while not stop.wait(0.5):
            if not any(w.is_alive() for w in workers):
                break  # every file camera ended and the queues are drained (or a worker crashed)
        if not stop.is_set():
            log.info("all cameras ended; %d frame(s) processed", sum(w.processed for w in workers))
        stop.set()
        _join(list(captures), JOIN_TIMEOUT_S)
        hub.close()
        _join(list(workers), JOIN_TIMEOUT_S)
        publisher.stop()
        if server is not None:
            stop_server(*server)
        crashed = [w for w in workers if w.error is not None]
        if crashed:
            log.error("stopped after a worker crash: %s", crashed[0].error)
            return 1
        log.info("stopped cleanly")
        return 0


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)


def describe(cfg: Config) -> str:  # used by logs/tests
    return json.dumps(cfg.to_dict(masked=True))
