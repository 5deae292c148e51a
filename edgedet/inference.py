"""Inference worker threads: frame -> preprocess -> forward -> decode -> sink.

N workers share one loaded detector (a TorchScript forward releases the GIL, so they run in
parallel) and take frames round-robin from the ``FrameHub``. Each worker owns its
preprocessing buffers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from edgedet.framequeue import FrameHub
from edgedet.heartbeat import Heartbeat
from edgedet.metrics import Metrics
from edgedet.model.base import Detector
from edgedet.postprocess import decode
from edgedet.preprocess import Preprocessor
from edgedet.types import Detection, Detections, Frame

log = logging.getLogger(__name__)

Sink = Callable[[Detections, Frame], None]


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    conf: float = 0.25
    iou: float = 0.7
    classes: Sequence[int] | None = None
    max_det: int = 300


def thread_layout(
    cores: int | None = None, count: int | None = None, threads: int | None = None, throughput: bool = False
) -> tuple[int, int]:
    """Default ``(workers, torch threads per worker)`` for a box with ``cores`` cores.

    * Latency (live cameras, the default): one intra-op thread per core in total, at most 4 per
      worker (beyond 4 the forward scales poorly): 2 cores -> 1 x 2, 4 -> 1 x 4, 8 -> 2 x 4. Each
      frame gets all the cores, so it is processed in about half the time of 2 x 1.
    * ``throughput`` (a file read with back-pressure, ``realtime: false``): one single-threaded
      worker per core, 2 cores -> 2 x 1. Pre/post-processing of one worker overlaps the forward of
      the other; measured 6.38 vs 5.87 fps on the 2-core reference box (see README "Performance").
    Explicit ``count`` / ``threads`` win; the other is derived to fill the cores.
    """
    cores = max(1, cores or os.cpu_count() or 1)
    if count and threads:
        return count, threads
    if count:
        return count, max(1, cores // count)
    per_worker = threads or (1 if throughput else min(cores, 4))
    return max(1, cores // per_worker), per_worker


class InferenceWorker(threading.Thread):
    """One worker thread. A failure on one frame (preprocess, decode, the sink) skips that frame and is
    counted (``FrameErrors``); any other exception in the loop is logged, recorded and stops the daemon.

    With ``batch_size`` > 1 the worker gathers up to that many frames (different cameras take
    turns in the hub), waiting at most ``batch_timeout_s`` after the first, and runs them through
    one forward: the GPU path. On a CPU, batching does not help (compute-bound), so 1 is the default.
    """

    def __init__(
        self,
        index: int,
        hub: FrameHub,
        detector: Detector,
        stop: threading.Event,
        sink: Sink,
        metrics: Metrics,
        options: DecodeOptions | None = None,
        poll_s: float = 0.2,
        on_crash: Callable[[BaseException], None] | None = None,
        batch_size: int = 1,
        batch_timeout_s: float = 0.005,
        errors: FrameErrors | None = None,
    ) -> None:
        """``stop`` ends this worker; ``on_crash`` (default: set ``stop``) is told about a crash;
        ``errors`` contains per-frame failures (shared by a pool's workers)."""
        super().__init__(name=f"infer:{index}", daemon=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.hub = hub
        self.detector = detector
        self.stop_event = stop
        self.sink = sink
        self.metrics = metrics
        self.options = options or DecodeOptions()
        self.poll_s = poll_s
        self.on_crash = on_crash
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.error: BaseException | None = None
        self.processed = 0
        self.frame_errors = errors if errors is not None else FrameErrors(metrics)
        self.heartbeat = Heartbeat()  # silent while a forward runs: a stuck one shows (health.Liveness)
        h, w = detector.info.imgsz
        self._pre = Preprocessor(h, w, dtype=detector.np_dtype, batch=batch_size,
                                 buffer=detector.input_buffer(batch_size), layout=detector.input_layout)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():  # per frame: a busy hub seldom returns None
                self.heartbeat.beat(self.poll_s + self.batch_timeout_s)
                frame = self.hub.get(timeout=self.poll_s)
                if frame is None:
                    if self.stop_event.is_set() or self.hub.ended():
                        return
                    continue
                self.process_batch(self._gather(frame))
        except BaseException as exc:  # noqa: BLE001 - a crashed worker must stop the daemon loudly
            self.error = exc
            log.exception("inference worker %s crashed; stopping edgedet", self.name)
            if self.on_crash is not None:
                self.on_crash(exc)
            else:
                self.stop_event.set()

    def _gather(self, first: Frame) -> list[tuple[Frame, int]]:
        """``first`` plus up to batch_size - 1 more frames that arrive within the batch timeout."""
        frames = [(first, time.monotonic_ns())]
        if self.batch_size > 1:
            deadline = time.monotonic() + self.batch_timeout_s
            while len(frames) < self.batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                more = self.hub.get(timeout=remaining)
                if more is None:
                    break
                frames.append((more, time.monotonic_ns()))
        return frames

    def process(self, frame: Frame) -> Detections | None:
        """One frame through the pipeline; None when a stage failed on it (counted, see ``FrameErrors``)."""
        results = self.process_batch([(frame, time.monotonic_ns())])
        return results[0] if results else None

    def process_batch(self, frames: list[tuple[Frame, int]]) -> list[Detections]:
        """Preprocess each (frame, dequeue time) into its batch slot, one forward, decode each, sink each.

        A failure in one frame's preprocessing, decoding or sink skips that frame only (counted in
        ``frame_errors{camera,kind}``); the forward pass itself is not guarded (a detector that
        raises stops the daemon: a restart reloads the model)."""
        m, errors = self.metrics, self.frame_errors
        m.workers_busy.inc()
        try:
            kept: list[tuple[Frame, int]] = []
            geos, t_pre = [], []
            for frame, t_deq in frames:
                with errors.guard(frame, "preprocess"):
                    _, geo = self._pre(frame.image, len(kept))
                    kept.append((frame, t_deq))
                    geos.append(geo)
                    t_pre.append(time.monotonic_ns())
            n = len(kept)
            if n == 0:
                return []
            raw = self.detector.infer(self._pre.batch[:n])
            t_inf = time.monotonic_ns()
            o = self.options
            decoded: list[tuple[Frame, int, tuple[Detection, ...], int, int]] = []
            for i, (frame, t_deq) in enumerate(kept):
                items: tuple[Detection, ...] | None = None
                with errors.guard(frame, "postprocess"):
                    items = decode(raw[i : i + 1], geos[i], self.detector.info.names, conf=o.conf, iou=o.iou,
                                   classes=o.classes, max_det=o.max_det)
                if items is not None:
                    decoded.append((frame, t_deq, items, t_pre[i], time.monotonic_ns()))
        finally:
            m.workers_busy.dec()
        results = []
        prev_post, prev_pre = t_inf, None
        for frame, t_deq, items, t_pre_i, t_post_i in decoded:
            pre_start = t_deq if prev_pre is None else max(t_deq, prev_pre)
            prev_pre = t_pre_i
            timings = {
                "queue_wait": (t_deq - frame.t_mono_ns) / 1e9,
                "preprocess": (t_pre_i - pre_start) / 1e9,
                "inference": (t_inf - t_pre[-1]) / 1e9,
                "postprocess": (t_post_i - prev_post) / 1e9,
            }
            prev_post = t_post_i
            dets = Detections(
                camera=frame.camera,
                seq=frame.seq,
                t_mono_ns=frame.t_mono_ns,
                t_wall=frame.t_wall,
                width=int(frame.image.shape[1]),
                height=int(frame.image.shape[0]),
                model=self.detector.info.name,
                items=items,
                timings=timings,
            )
            cam = frame.camera
            m.queue_wait.labels(camera=cam).observe(timings["queue_wait"])
            m.preprocess.labels(camera=cam).observe(timings["preprocess"])
            m.inference.labels(camera=cam).observe(timings["inference"])
            m.postprocess.labels(camera=cam).observe(timings["postprocess"])
            m.frames_processed.labels(camera=cam).inc()
            for det in items:
                m.detections.labels(camera=cam, label=det.label).inc()
            with errors.guard(frame, "sink"):
                self.sink(dets, frame)
            self.processed += 1
            results.append(dets)
        return results


class FrameErrors:
    """Contains per-frame failures: ``with errors.guard(frame, kind): ...`` swallows an ``Exception``
    raised inside, counts it in ``frame_errors{camera,kind}`` and logs once per state change of
    ``(camera, kind)``: the first failure with its traceback (ERROR), then one INFO line when a later
    frame of that camera gets through that stage again. Thread-safe (shared by the workers)."""

    def __init__(self, metrics: Metrics, logger: logging.Logger | None = None) -> None:
        self.metrics = metrics
        self._log = logger or log
        self._failing: dict[tuple[str, str], int] = {}  # (camera, kind) -> frames failed in a row
        self._lock = threading.Lock()

    @contextmanager
    def guard(self, frame: Frame | Detections, kind: str) -> Iterator[None]:
        key = (frame.camera, kind)
        try:
            yield
        except Exception:  # noqa: BLE001 - one frame's failure must not stop the daemon
            self.metrics.frame_errors.labels(camera=frame.camera, kind=kind).inc()
            with self._lock:
                count = self._failing.get(key, 0)
                self._failing[key] = count + 1
            if count == 0:
                self._log.error("camera %s: %s failed on frame %d; skipping failing frames (counted in "
                                "edgedet_frame_errors_total) until it works again", frame.camera, kind, frame.seq,
                                exc_info=True)
            return
        if key in self._failing:  # a plain dict read on the hot path; the lock only on a change
            with self._lock:
                count = self._failing.pop(key, 0)
            if count:
                self._log.info("camera %s: %s works again (%d frame(s) failed)", frame.camera, kind, count)


class WorkerPool:
    """The inference threads; restartable with another detector (config reload) without touching
    capture or MQTT. A crashed worker calls ``on_crash``, which stops the daemon."""

    def __init__(self, hub: FrameHub, sink: Sink, metrics: Metrics,
                 on_crash: Callable[[BaseException], None]) -> None:
        self.hub = hub
        self.sink = sink
        self.metrics = metrics
        self.on_crash = on_crash
        self.frame_errors = FrameErrors(metrics)  # shared by every worker, across reloads
        self.workers: list[InferenceWorker] = []
        self._stop = threading.Event()
        self._generation = 0
        self._retired = 0  # frames processed by workers of earlier generations (before a reload)

    def start(self, detector: Detector, options: DecodeOptions, count: int, batch_size: int = 1,
              batch_timeout_s: float = 0.005) -> None:
        self._retired += sum(w.processed for w in self.workers)
        self._stop = threading.Event()
        base = self._generation * count
        self._generation += 1
        self.workers = [
            InferenceWorker(base + i, self.hub, detector, self._stop, self.sink, self.metrics, options,
                            on_crash=self.on_crash, batch_size=batch_size, batch_timeout_s=batch_timeout_s,
                            errors=self.frame_errors)
            for i in range(count)
        ]
        for w in self.workers:
            w.start()

    def stop(self, timeout: float) -> list[InferenceWorker]:
        """Let each worker finish its frame and exit; returns the workers still alive."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        return [w for w in self.workers if w.is_alive()]

    def alive(self) -> bool:
        return any(w.is_alive() for w in self.workers)

    def heartbeats(self) -> dict[str, Heartbeat]:
        """The heartbeat of every running worker thread (for the watchdog)."""
        return {w.name: w.heartbeat for w in self.workers if w.is_alive()}

    @property
    def processed(self) -> int:
        """Frames processed since start, across reloads."""
        return self._retired + sum(w.processed for w in self.workers)

    @property
    def errors(self) -> list[BaseException]:
        return [w.error for w in self.workers if w.error is not None]

