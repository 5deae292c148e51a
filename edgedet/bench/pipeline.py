"""The pipeline rows, child side: the daemon's own ``FrameHub``, ``CameraSet`` (one
``CaptureWorker``) and ``WorkerPool`` (``InferenceWorker`` threads) wired as ``app.run`` wires
them, minus MQTT and the metrics server, feeding a recording sink.

``measure_file``: the video read with back-pressure (``realtime: false``), as fast as the workers
go. ``measure_live``: a real-time source (RTSP, or the video paced at its fps and looped) with the
live queue policy: end-to-end latency, frame age, drops and per-stage medians.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from edgedet.bench.spawn import BenchError, LiveSpec
from edgedet.capture.cameras import CameraSet, SourceFactory, opencv_sources
from edgedet.capture.source import FrameSource
from edgedet.config import CameraConfig
from edgedet.framequeue import FrameHub
from edgedet.inference import DecodeOptions, WorkerPool, thread_layout
from edgedet.metrics import Metrics
from edgedet.model.base import Detector
from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads
from edgedet.types import Detections, Frame

log = logging.getLogger(__name__)

CAMERA = "bench"
STALL_TIMEOUT_S = 30.0  # generous: a loaded 2-core box may take seconds per frame at start-up
FIRST_RESULT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
STAGES = ("queue_wait", "preprocess", "inference", "postprocess")


class LimitedSource:
    """A ``FrameSource`` that ends after ``limit`` frames (``--frames``); delegates the rest."""

    def __init__(self, inner: FrameSource, limit: int | None) -> None:
        self._inner = inner
        self._limit = limit
        self._grabbed = 0

    @property
    def fps(self) -> float | None:
        return self._inner.fps

    @property
    def is_file(self) -> bool:
        return self._inner.is_file

    @property
    def read_timeout_s(self) -> float | None:
        return self._inner.read_timeout_s

    def open(self) -> None:
        self._grabbed = 0
        self._inner.open()

    def grab(self) -> bool:
        if self._limit is not None and self._grabbed >= self._limit:
            return False
        ok = self._inner.grab()
        self._grabbed += ok
        return ok

    def retrieve(self) -> np.ndarray | None:
        return self._inner.retrieve()

    def close(self) -> None:
        self._inner.close()


def limited_sources(limit: int | None) -> SourceFactory:
    """The daemon's OpenCV source factory, each source ending after ``limit`` frames."""

    def factory(cam: CameraConfig) -> Callable[[], FrameSource]:
        make = opencv_sources(cam)
        return lambda: LimitedSource(make(), limit)

    return factory


class Recorder:
    """The sink: keeps (sink time, Detections) and the torch thread counts seen in the worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, Detections]] = []
        self.threads_observed: set[int] = set()
        self.first = threading.Event()

    def __call__(self, dets: Detections, frame: Frame) -> None:
        now = time.monotonic_ns()
        with self.lock:
            if len(self.threads_observed) < 4:
                self.threads_observed.add(int(torch.get_num_threads()))
            self.events.append((now, dets))
        self.first.set()


@dataclass(frozen=True, slots=True)
class Pipeline:
    stop: threading.Event  # set by a crashed worker too
    registry: CollectorRegistry
    pool: WorkerPool
    sink: Recorder

    def counter(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"camera": CAMERA, **labels}) or 0.0


@contextmanager
def running(detector: Detector, camera: CameraConfig, count: int,
            sources: SourceFactory = opencv_sources, sink: Recorder | None = None) -> Iterator[Pipeline]:
    """The pipeline on one camera with ``count`` workers, started in ``app.run``'s order (workers,
    then capture); on exit stopped, and BenchError when a worker crashed."""
    stop = threading.Event()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    hub = FrameHub(stop, metrics)
    sink = sink if sink is not None else Recorder()
    pool = WorkerPool(hub, sink, metrics, on_crash=lambda _exc: stop.set())
    cameras = CameraSet(hub, metrics, None, sources)
    pool.start(detector, DecodeOptions(), count)
    try:
        cameras.start(CAMERA, camera)
        yield Pipeline(stop, registry, pool, sink)
    finally:
        stop.set()
        hub.close()
        cameras.stop(timeout=STOP_TIMEOUT_S)  # warns about a capture thread still alive
        alive = pool.stop(STOP_TIMEOUT_S)
        if alive:
            log.warning("threads still alive after stop: %s", ", ".join(w.name for w in alive))
    if pool.errors:
        raise BenchError(f"inference worker crashed: {pool.errors[0]}")


def stage_ms(events: Sequence[tuple[int, Detections]]) -> dict[str, float]:
    return {k: 1000.0 * statistics.median(d.timings[k] for _, d in events) for k in STAGES}


def measure_file(detector: Detector, video: str, frames: int | None, queue_size: int, count: int,
                 threads: int) -> dict[str, Any]:
    """The video through the pipeline with back-pressure; fps from the first to the last result."""
    camera = CameraConfig(url=video, realtime=False, loop=False, queue_size=queue_size,
                          stall_timeout_s=STALL_TIMEOUT_S)
    with running(detector, camera, count, limited_sources(frames)) as pipe:
        deadline = time.monotonic() + 60.0 + (frames or 1000) * 2.0
        while pipe.pool.alive() and time.monotonic() < deadline:
            if pipe.stop.wait(0.1):
                break
        timed_out = pipe.pool.alive()
    if timed_out:
        raise BenchError("pipeline did not finish the file in time")
    sink = pipe.sink
    events = sorted(sink.events, key=lambda e: e[0])
    if len(events) < 2:
        raise BenchError(f"pipeline processed {len(events)} frame(s); need at least 2")
    span_s = (events[-1][0] - events[0][0]) / 1e9
    return {
        "workers": count,
        "threads": threads,
        "threads_observed": sorted(sink.threads_observed),
        "queue_size": queue_size,
        "frames": len(events),
        "fps": (len(events) - 1) / span_s,
        "fps_robust": 1e9 / statistics.median(b[0] - a[0] for a, b in zip(events, events[1:], strict=False)),
        "stages_ms": stage_ms(events),
    }


def measure_live(spec: LiveSpec) -> dict[str, Any]:
    count, threads = thread_layout(None, spec.workers, spec.threads)
    set_torch_threads(threads)
    detector = TorchScriptDetector(spec.model)
    camera = CameraConfig(url=spec.url, loop=spec.source == "file", realtime=True, queue_size=spec.queue_size,
                          stall_timeout_s=STALL_TIMEOUT_S)
    with running(detector, camera, count) as pipe:
        sink = pipe.sink

        def counters() -> tuple[float, float]:
            return (pipe.counter("edgedet_frames_captured_total"),
                    pipe.counter("edgedet_frames_dropped_total", reason="queue_full"))

        if not sink.first.wait(FIRST_RESULT_TIMEOUT_S):
            raise BenchError(f"live: no frame processed from {spec.url} within {FIRST_RESULT_TIMEOUT_S:g} s")
        pipe.stop.wait(spec.warmup_s)
        cap0, drop0 = counters()
        t0 = time.monotonic_ns()
        end = t0 + int(spec.seconds * 1e9)
        ages: list[float] = []
        while time.monotonic_ns() < end and not pipe.stop.wait(0.05):
            with sink.lock:
                last = max((d.t_mono_ns for _, d in sink.events[-4:]), default=None)
            if last is not None:
                ages.append(ms(time.monotonic_ns() - last))
        t1 = time.monotonic_ns()
        cap1, drop1 = counters()
    events = [(t, d) for t, d in sink.events if t0 <= t <= t1]
    if not events:
        raise BenchError("live: no frame processed in the measurement window")
    e2e = [ms(t - d.t_mono_ns) for t, d in events]
    captured, dropped = int(cap1 - cap0), int(drop1 - drop0)
    # e2e minus the four stages: Detections + metrics + sink call (decode is inside queue_wait)
    other = statistics.median(e - 1000.0 * sum(d.timings.values()) for e, (_, d) in zip(e2e, events, strict=True))
    window_s = (t1 - t0) / 1e9
    return {
        "seconds": round(window_s, 2),
        "workers": count,
        "threads": threads,
        "queue_size": spec.queue_size,
        "captured": captured,
        "processed": len(events),
        "dropped": dropped,
        "drop_rate": round(dropped / captured, 4) if captured else None,
        "captured_fps": round(captured / window_s, 2),
        "processed_fps": round(len(events) / window_s, 2),
        "e2e_ms": {f"p{q}": round(percentile(e2e, q), 2) for q in (50, 95, 99)},
        "frame_age_ms": {
            "p50": round(percentile(ages, 50), 2),
            "p95": round(percentile(ages, 95), 2),
            "max": round(max(ages), 2) if ages else None,
        },
        "stages_ms": {k: round(v, 2) for k, v in stage_ms(events).items()} | {"other": round(other, 2)},
    }


def percentile(values: Sequence[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def ms(ns: float) -> float:
    return ns / 1e6
