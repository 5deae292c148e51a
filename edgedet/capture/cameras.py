"""The running cameras: one capture thread + queue per enabled camera, started, stopped and
restarted by name (start-up, config reload, shutdown)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgedet.capture.source import FrameSource, OpenCvSource
from edgedet.capture.worker import CaptureWorker
from edgedet.config import CameraConfig
from edgedet.framequeue import CameraQueue, FrameHub
from edgedet.heartbeat import Heartbeat
from edgedet.metrics import Metrics
from edgedet.motion import motion_settings
from edgedet.redact import mask_url

log = logging.getLogger("edgedet.capture")

OPEN_TIMEOUT_S = 10.0
MAX_READ_TIMEOUT_S = 10.0


SourceFactory = Callable[[CameraConfig], Callable[[], FrameSource]]
"""camera config -> a function that makes a new (unopened) source for each capture session."""


def opencv_sources(cam: CameraConfig) -> Callable[[], FrameSource]:
    """The production source factory: an ``OpenCvSource`` for the camera's URL."""
    display = mask_url(cam.url)
    return lambda: OpenCvSource(
        cam.url,
        cam.kind,
        transport=cam.transport,
        width=cam.width,
        height=cam.height,
        fourcc=cam.fourcc,
        open_timeout_s=OPEN_TIMEOUT_S,
        read_timeout_s=min(cam.stall_timeout_s, MAX_READ_TIMEOUT_S),
        display_url=display,
    )


@dataclass(slots=True)
class _Running:
    config: CameraConfig
    queue: CameraQueue
    stop: threading.Event
    thread: CaptureWorker


class CameraSet:
    """Capture threads by camera name. Each camera has its own stop Event, so one camera can be
    restarted without touching the others."""

    def __init__(self, hub: FrameHub, metrics: Metrics, on_state: Callable[[str, bool], None] | None,
                 sources: SourceFactory = opencv_sources) -> None:
        self.hub = hub
        self.metrics = metrics
        self.on_state = on_state
        self.sources = sources
        self._running: dict[str, _Running] = {}
        self.tube_labels: frozenset[str] = frozenset()  # events with confirm: tube (slow labels; the app sets it)

    @property
    def names(self) -> list[str]:
        return list(self._running)

    def snapshot(self) -> dict[str, tuple[CameraQueue, CameraConfig]]:
        """Queue and config of every running camera, copied at once (safe from other threads)."""
        return {name: (r.queue, r.config) for name, r in list(self._running.items())}

    def heartbeats(self) -> dict[str, Heartbeat]:
        """The capture thread's heartbeat of every running camera (for the watchdog)."""
        return {name: r.thread.heartbeat for name, r in list(self._running.items())}

    def queues(self) -> dict[str, CameraQueue]:
        # list() copies in one step: the HTTP thread calls this while a reload may change the set.
        return {name: r.queue for name, r in list(self._running.items())}

    def start(self, name: str, cam: CameraConfig) -> None:
        backpressure = cam.kind == "file" and not cam.realtime
        queue = self.hub.add_camera(name, maxsize=cam.queue_size, backpressure=backpressure)
        stop = threading.Event()
        thread = CaptureWorker(
            name,
            self.sources(cam),
            queue,
            stop,
            self.metrics,
            fps_limit=cam.fps_limit,
            loop=cam.loop,
            realtime=cam.realtime,
            stall_timeout_s=cam.stall_timeout_s,
            frozen_after_s=cam.frozen_after_s,
            motion=motion_settings(cam, self.tube_labels),
            on_state=self.on_state,
            max_block_s=max(OPEN_TIMEOUT_S, MAX_READ_TIMEOUT_S),
            backoff_max=cam.reconnect_max_s,
        )
        self._running[name] = _Running(cam, queue, stop, thread)
        thread.start()

    def stop(self, names: list[str] | None = None, timeout: float = 2.0) -> None:
        """Stop (and forget) the given cameras, all by default; joins with a shared deadline."""
        chosen = [self._running.pop(n) for n in (names if names is not None else list(self._running))]
        for r in chosen:
            r.stop.set()
        deadline = time.monotonic() + timeout
        for r in chosen:
            r.thread.join(max(0.0, deadline - time.monotonic()))
            if r.thread.is_alive():
                log.warning("thread %s did not stop within %.1fs", r.thread.name, timeout)
            self.hub.remove_camera(r.thread.camera)

    def latest(self, name: str) -> np.ndarray | None:
        """The newest frame camera ``name`` decoded (None before its first frame or when not running)."""
        running = self._running.get(name)
        return None if running is None else running.thread.latest

    def tune(self, name: str, cam: CameraConfig) -> bool:
        """Apply ``cam``'s fps_limit and detect block to the running camera ``name`` in place (no restart; a
        profile switch). False when the camera is not running."""
        running = self._running.get(name)
        if running is None:
            return False
        running.thread.configure(cam.fps_limit, motion_settings(cam, self.tube_labels))
        running.config = cam
        return True

    def hold(self, name: str, interval_s: float | None) -> None:
        """While an event of camera ``name`` is in progress: in motion mode, infer at least every
        ``interval_s`` (None: back to the floor). No-op for a camera not running or not in motion mode."""
        running = self._running.get(name)
        gate = None if running is None else running.thread.gate
        if gate is not None and gate.hold_interval_s != interval_s:
            gate.hold_interval_s = interval_s

    def restart(self, name: str, cam: CameraConfig) -> None:
        self.stop([name])
        self.start(name, cam)
