"""The running stages of one daemon, held together so that start-up (``app.py``) and a config
reload (``reload.py``) change them the same way.

``load_model`` turns the model and workers sections into a loaded detector with its decode options
and thread layout; ``Pipeline`` starts workers and cameras and forgets removed cameras.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from edgedet import __version__
from edgedet.capture.cameras import CameraSet
from edgedet.config import CameraConfig, ModelConfig, WorkersConfig
from edgedet.errors import ConfigError
from edgedet.events.stage import EventStage
from edgedet.health import FlowTracker
from edgedet.homeassistant import HomeAssistant
from edgedet.inference import DecodeOptions, WorkerPool, thread_layout
from edgedet.metrics import Metrics
from edgedet.model import load_detector, torch_version
from edgedet.model.base import Detector
from edgedet.outputs.client import MqttPublisher
from edgedet.postprocess import class_ids

log = logging.getLogger("edgedet.app")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    detector: Detector
    options: DecodeOptions
    workers: int
    batch_size: int
    batch_timeout_s: float


def load_model(model: ModelConfig, workers: WorkersConfig, cameras: Mapping[str, CameraConfig]) -> LoadedModel:
    """Load the detector, derive decode options and the thread layout (raises EdgedetError)."""
    # Throughput layout when a file is read with back-pressure (every frame matters, not latency).
    throughput = any(c.enabled and c.kind == "file" and not c.realtime for c in cameras.values())
    count, threads = thread_layout(None, workers.count, workers.threads_per_worker, throughput)
    detector = load_detector(model.path, device=model.device, half=model.half or None, backend=model.backend,
                             threads=threads, workers=count)
    classes = None
    if model.classes is not None:
        try:
            classes = class_ids(model.classes, detector.info.names)
        except ValueError as exc:
            raise ConfigError(f"model.classes: {exc}") from None
    options = DecodeOptions(conf=model.conf, iou=model.iou, classes=classes, max_det=model.max_det)
    log.info("model %s (%s, input %s) on %s; %d worker(s) x %d thread(s)", detector.info.name, detector.runtime,
             "x".join(map(str, detector.info.imgsz)), detector.device, count, threads)
    return LoadedModel(detector, options, count, workers.batch_size, workers.batch_timeout_ms / 1000)


@dataclass(slots=True)
class Pipeline:
    """capture (``cams``) -> ``hub`` -> inference (``pool``) -> sink -> ``publisher`` / ``events`` / ``ha``."""

    metrics: Metrics
    flow: FlowTracker
    publisher: MqttPublisher
    cams: CameraSet
    pool: WorkerPool
    events: EventStage | None
    ha: HomeAssistant
    join_timeout_s: float = 2.0
    on_model: Callable[[LoadedModel], None] | None = None  # told each loaded model (the web console)

    def start_model(self, model: LoadedModel) -> None:
        """Start the inference workers on ``model`` (stopping the running ones first, on a reload)."""
        self.stop_workers()
        self.pool.start(model.detector, model.options, model.workers, model.batch_size, model.batch_timeout_s)
        det = model.detector
        self.metrics.set_build(version=__version__, model=det.info.name, torch=torch_version(), device=det.device)
        if self.on_model is not None:
            self.on_model(model)

    def stop_workers(self) -> None:
        for w in self.pool.stop(self.join_timeout_s):
            log.warning("thread %s did not stop within %.1fs", w.name, self.join_timeout_s)

    def start_camera(self, name: str, cam: CameraConfig) -> None:
        self.metrics.frame_age.labels(camera=name).set_function(partial(self.flow.age_s, name))
        self.cams.start(name, cam)

    def forget_camera(self, name: str) -> None:
        """A removed camera: its retained topics are cleared on the broker (status, snapshot, stats,
        ``<label>/active``), its gauges and frame age go (its thread stopped already)."""
        if self.events is not None:
            self.events.forget_camera(name)  # ends its events first, so nothing re-sets its topics
        self.publisher.clear_camera(name)
        self.metrics.camera_up.labels(camera=name).set(0)
        with suppress(KeyError):  # else the age of its last frame keeps growing: a stale-camera alert
            self.metrics.frame_age.remove(name)
