"""Wiring only: metrics -> publisher -> inference -> capture; stop in reverse.

``run(cfg, config_path)`` returns the process exit code: 0 after a clean stop (signal, or every
file camera ended and drained), 1 when a worker crashed. SIGHUP re-reads ``config_path``
(see ``reload.py``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgedet import __version__
from edgedet.capture.cameras import CameraSet
from edgedet.config import Config, load_config
from edgedet.errors import ConfigError, EdgedetError
from edgedet.events import EventStage
from edgedet.framequeue import FrameHub
from edgedet.homeassistant import HomeAssistant
from edgedet.inference import DecodeOptions, WorkerPool, thread_layout
from edgedet.metrics import Metrics, serve, stop_server
from edgedet.model import load_detector, torch_version
from edgedet.model.base import Detector
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.outbox import Outbox, open_outbox
from edgedet.postprocess import class_ids
from edgedet.reload import plan
from edgedet.sdnotify import Notifier, WatchdogThread, watchdog_interval
from edgedet.types import Detections, Frame

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 2.0

TICK_S = 0.5


class FlowTracker:
    """When each camera last produced a processed frame: feeds /healthz, the watchdog and the
    frame-age gauges."""

    def __init__(self) -> None:
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


def _class_ids(cfg: Config, names: tuple[str, ...]) -> list[int] | None:
    if cfg.model.classes is None:
        return None
    try:
        return class_ids(cfg.model.classes, names)
    except ValueError as exc:
        raise ConfigError(f"model.classes: {exc}") from None


def _load_model(cfg: Config) -> tuple[Detector, DecodeOptions, int]:
    """Load the detector and derive decode options and the worker count (raises EdgedetError)."""
    # Throughput layout when a file is read with back-pressure (every frame matters, not latency).
    throughput = any(c.enabled and c.kind == "file" and not c.realtime for c in cfg.cameras.values())
    count, threads = thread_layout(None, cfg.workers.count, cfg.workers.threads_per_worker, throughput)
    detector = load_detector(cfg.model.path, device=cfg.model.device, half=cfg.model.half or None,
                             backend=cfg.model.backend, threads=threads)
    options = DecodeOptions(
        conf=cfg.model.conf, iou=cfg.model.iou, classes=_class_ids(cfg, detector.info.names),
        max_det=cfg.model.max_det,
    )
    log.info("model %s (%s, input %s) on %s; %d worker(s) x %d thread(s)", detector.info.name,
             type(detector).__name__, "x".join(map(str, detector.info.imgsz)), detector.device, count, threads)
    return detector, options, count


@contextmanager
def _signals(stop: threading.Event, reload_requested: threading.Event) -> Iterator[None]:
    def on_stop(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:
        reload_requested.set()

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(cfg: Config, config_path: str | Path | None = None, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    reload_requested = threading.Event()
    with _signals(stop, reload_requested):
        return _run(cfg, config_path, stop, reload_requested)


def _run(cfg: Config, config_path: str | Path | None, stop: threading.Event,
         reload_requested: threading.Event) -> int:
    cameras = {name: cam for name, cam in cfg.cameras.items() if cam.enabled}
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    flow = FlowTracker()
    hub = FrameHub(stop, metrics)
    outbox = _open_outbox(cfg, metrics)
    # Constructing the publisher checks the TLS files (not connecting yet): with the metrics port
    # below, bad input is reported before the slow model load.
    publisher = MqttPublisher(cfg.mqtt, cfg.node_id, list(cameras), metrics, client_id=cfg.mqtt.client_id,
                              outbox=outbox)
    cams = CameraSet(hub, metrics, publisher.set_camera_status)

    def health() -> tuple[bool, dict[str, Any]]:
        running = cams.snapshot()
        queues = {name: queue for name, (queue, _) in running.items()}
        ended = {n for n, q in queues.items() if q.closed}
        problems = []
        for name, (_, cam) in running.items():
            age = flow.age_s(name)
            if name in ended:
                continue
            if age != age:
                problems.append(f"camera {name}: no frame yet")
            elif age > cam.stall_timeout_s:
                problems.append(f"camera {name}: last frame {age:.1f}s ago")
        if not publisher.connected:
            problems.append(f"MQTT broker {cfg.mqtt.host}:{cfg.mqtt.port} not connected")
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unhealthy",
            "mqtt_connected": publisher.connected,
            "cameras": {n: {"ended": n in ended, "last_frame_age_s": _round(flow.age_s(n))} for n in queues},
        }
        if problems:
            body["reason"] = "; ".join(problems)
        return not problems, body

    try:
        server = serve(registry, cfg.metrics.host, cfg.metrics.port, health) if cfg.metrics.enabled else None
    except BaseException:
        publisher.stop()
        raise
    try:
        detector, options, count = _load_model(cfg)
    except BaseException:
        publisher.stop()
        if server is not None:
            stop_server(*server)
        raise
    metrics.set_build(version=__version__, model=detector.info.name, torch=_torch_version(detector),
                      device=detector.device)
    events = EventStage.from_config(cfg, cameras, publisher, f"{cfg.mqtt.topic_prefix}/{cfg.node_id}", metrics)
    ha = HomeAssistant(publisher, cfg.node_id, cfg.mqtt.topic_prefix)  # discovery + stats (opt-in)
    ha.configure(cfg, list(cameras), detector.info.names)

    def sink(dets: Detections, frame: Frame) -> None:
        publisher.publish_detections(dets)
        e2e_s = (time.monotonic_ns() - dets.t_mono_ns) / 1e9
        metrics.end_to_end.labels(camera=dets.camera).observe(e2e_s)
        ha.observe(dets.camera, e2e_s)
        flow.seen(dets.camera, dets.t_mono_ns)
        if events is not None:
            events.on_frame(dets, frame.image)

    crashed: list[BaseException] = []

    def on_crash(exc: BaseException) -> None:
        crashed.append(exc)
        stop.set()

    publisher.start()
    pool = WorkerPool(hub, sink, metrics, on_crash)
    pool.start(detector, options, count, cfg.workers.batch_size, cfg.workers.batch_timeout_ms / 1000)
    for name, cam in cameras.items():
        metrics.frame_age.labels(camera=name).set_function(partial(flow.age_s, name))
        cams.start(name, cam)
    log.info("edgedet %s running: %d camera(s): %s", __version__, len(cameras), ", ".join(cameras))

    notifier, started = Notifier(), time.monotonic()

    def sd_health() -> tuple[bool, str]:
        live = [n for n, q in cams.queues().items() if not q.closed]
        ages = [a for a in (flow.age_s(n) for n in live) if a == a]
        newest = min(ages, default=time.monotonic() - started)
        ok = not crashed and (not live or newest < cfg.watchdog_grace_s)
        summary = f"{len(live)} live camera(s), {pool.processed} frame(s) processed"
        return ok, summary if ok else f"no frame processed for {newest:.0f}s"

    notifier.ready(f"{len(cameras)} camera(s), model {detector.info.name}")
    dog = WatchdogThread(notifier, stop, sd_health, watchdog_interval() or 10.0)
    dog.start()

    while not stop.wait(TICK_S):
        if reload_requested.is_set():
            reload_requested.clear()
            cfg = _reload(cfg, config_path, cams, pool, events, metrics, flow, notifier, publisher, ha)
        if events is not None:
            events.tick()
        ha.tick()
        if not pool.alive():
            break  # every file camera ended and the queues are drained (or a worker crashed)
    if not stop.is_set():
        log.info("all cameras ended; %d frame(s) processed", pool.processed)
    stop.set()
    notifier.stopping()
    cams.stop(timeout=JOIN_TIMEOUT_S)
    hub.close()
    for w in pool.stop(JOIN_TIMEOUT_S):
        log.warning("thread %s did not stop within %.1fs", w.name, JOIN_TIMEOUT_S)
    if events is not None:
        events.close()
    publisher.stop()
    if server is not None:
        stop_server(*server)
    dog.join(JOIN_TIMEOUT_S)
    if crashed:
        log.error("stopped after a worker crash: %s", crashed[0])
        return 1
    log.info("stopped cleanly")
    return 0


def _open_outbox(cfg: Config, metrics: Metrics) -> Outbox | None:
    return open_outbox(cfg.state_dir, cfg.outbox, metrics)


def _reload(cfg: Config, config_path: str | Path | None, cams: CameraSet, pool: WorkerPool,
            events: EventStage | None, metrics: Metrics, flow: FlowTracker, notifier: Notifier,
            publisher: MqttPublisher, ha: HomeAssistant) -> Config:
    """Apply a changed config file; on any error keep running the old config. Returns the config in force."""
    if config_path is None:
        log.warning("SIGHUP: no config file to reload")
        return cfg
    notifier.reloading()
    try:
        new = load_config(config_path)
        change = plan(cfg, new)
        if change.model:
            detector, options, count = _load_model(new)
    except EdgedetError as exc:
        log.error("config reload rejected, keeping the running config: %s", str(exc).replace("\n", "; "))
        notifier.ready("reload rejected")
        return cfg
    for key in change.ignored:
        log.warning("config reload: '%s' changed; it takes effect after a restart", key)
    if change.log_level:
        logging.getLogger().setLevel(new.log_level)
    if change.model:
        for w in pool.stop(JOIN_TIMEOUT_S):
            log.warning("thread %s did not stop within %.1fs", w.name, JOIN_TIMEOUT_S)
        pool.start(detector, options, count, new.workers.batch_size, new.workers.batch_timeout_ms / 1000)
        metrics.set_build(version=__version__, model=detector.info.name, torch=_torch_version(detector),
                          device=detector.device)
    cams.stop(list(change.removed) + list(change.changed))
    for name in change.removed:
        publisher.forget_camera(name)
        metrics.camera_up.labels(camera=name).set(0)  # its capture thread is gone
        with suppress(KeyError):  # else the age of its last frame keeps growing: a stale-camera alert
            metrics.frame_age.remove(name)
    enabled = [n for n, c in new.cameras.items() if c.enabled]
    if events is not None and change.changed:
        # A restarted camera counts frames from seq 0 again, which its tracker would ignore (it
        # drops frames at or below the last seq): end its events and give it a new tracker.
        events.reconfigure(new, [n for n in enabled if n not in change.changed])
    ha.configure(new, enabled, detector.info.names if change.model else None)  # sends only what changed
    for name in change.added + change.changed:
        metrics.frame_age.labels(camera=name).set_function(partial(flow.age_s, name))
        cams.start(name, new.cameras[name])
    if events is not None and (change.events or change.added or change.removed or change.changed):
        events.reconfigure(new, enabled)
    log.info("config reloaded: %s", change.summary())
    notifier.ready(f"reloaded: {change.summary()}")
    # Sections that need a restart keep their running values.
    from dataclasses import replace

    return replace(new, **{key: getattr(cfg, key) for key in change.ignored})


def _torch_version(detector: Detector) -> str:
    """torch's version for the build info, without importing torch for another backend."""
    return torch_version()


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)
