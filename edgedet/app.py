"""Start and stop order only: metrics -> publisher -> HTTP -> model -> events -> workers -> cameras;
stop in reverse.

``run(cfg, config_path)`` returns the process exit code: 0 after a clean stop (signal, or every
file camera ended and drained), 1 when a worker crashed. SIGHUP re-reads ``config_path``
(``reload.apply``). Health answers live in ``health.py``, the per-frame fan-out in ``results.py``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from edgedet import __version__, reload
from edgedet.capture.cameras import CameraSet
from edgedet.config import Config
from edgedet.events.stage import EventStage
from edgedet.framequeue import FrameHub
from edgedet.health import CrashLatch, FlowTracker, Health, Liveness
from edgedet.homeassistant import HomeAssistant
from edgedet.inference import WorkerPool
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.node import NodeAnnouncer, precision
from edgedet.outputs.outbox import open_outbox
from edgedet.pipeline import Pipeline, load_model
from edgedet.profile_runner import ProfileRunner
from edgedet.results import ResultSink
from edgedet.sdnotify import Notifier, WatchdogThread, watchdog_interval
from edgedet.web.launch import start_http

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 2.0
TICK_S = 0.5


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
    metrics = Metrics(CollectorRegistry())
    flow = FlowTracker()
    hub = FrameHub(stop, metrics)
    outbox = open_outbox(cfg.state_dir, cfg.outbox, metrics)
    # Constructing the publisher checks the TLS files (not connecting yet): with the metrics port
    # below, bad input is reported before the slow model load.
    publisher = MqttPublisher(cfg.mqtt, cfg.node_id, list(cameras), metrics, outbox=outbox)
    cams = CameraSet(hub, metrics, publisher.set_camera_status)
    with ExitStack() as undo:  # on a start-up error: stop what was started, in reverse
        undo.callback(publisher.stop)
        broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}"  # HTTP: /metrics + /healthz, and the web console
        http = start_http(cfg.metrics, cfg.web, node=cfg.node_id, state_dir=cfg.state_dir, metrics=metrics,
                          health=Health(cams, flow, publisher, broker), publisher=publisher, cameras=lambda: cams.names,
                          broker=broker)
        undo.callback(http.stop)
        model = load_model(cfg.model, cfg.workers, cameras)
        undo.pop_all()
    events = EventStage.from_config(cfg.events, cameras, cfg.state_dir, http.events_publisher(publisher),
                                    publisher.topics, metrics)
    ha = HomeAssistant(publisher, publisher.topics, stats=True)  # discovery (opt-in) + stats
    det = model.detector  # retained <node>/info (docs/FLEET.md) and the duplicate node_id check:
    NodeAnnouncer(publisher, publisher.topics).announce(model=det.info.name, backend=det.backend,
                                                        precision=precision(det.np_dtype), cameras=list(cameras),
                                                        console_url=http.url)
    ha.configure(cfg.homeassistant, list(cameras), model.detector.info.names, classes=cfg.model.classes,
                 events_enabled=cfg.events.enabled)
    crashes = CrashLatch(stop)
    sink = ResultSink(publisher, metrics, flow, ha, events, live=http.live)
    pool = WorkerPool(hub, sink, metrics, crashes)
    profiles = ProfileRunner(cams, events, sink, publisher, publisher.topics, metrics)
    pipeline = Pipeline(metrics, flow, publisher, cams, pool, events, ha, JOIN_TIMEOUT_S, on_model=http.set_model)

    publisher.start()
    pipeline.start_model(model)
    for name, cam in cameras.items():
        pipeline.start_camera(name, cam)
    profiles.configure(cameras, cfg.events, cfg.location)
    log.info("edgedet %s running: %d camera(s): %s", __version__, len(cameras), ", ".join(cameras))
    notifier = Notifier()
    notifier.ready(f"{len(cameras)} camera(s), model {model.detector.info.name}")
    liveness = Liveness(cams, pool, crashes, cfg.watchdog_grace_s, TICK_S)
    liveness.tick()
    dog = WatchdogThread(notifier, stop, liveness, watchdog_interval() or 10.0)
    dog.start()

    while not stop.wait(TICK_S):
        liveness.tick()
        if reload_requested.is_set():
            reload_requested.clear()
            cfg = reload.apply(pipeline, cfg, config_path, notifier, stop, liveness.tick)
            profiles.configure({n: c for n, c in cfg.cameras.items() if c.enabled}, cfg.events, cfg.location)
        profiles.tick()
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
    pipeline.stop_workers()
    if events is not None:
        events.close()
    publisher.stop()
    http.stop()
    dog.join(JOIN_TIMEOUT_S)
    if crashes.first is not None:
        log.error("stopped after a worker crash: %s", crashes.first)
        return 1
    log.info("stopped cleanly")
    return 0
