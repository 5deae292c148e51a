"""The running cameras: one capture thread + queue per enabled camera, started, stopped and
restarted by name (start-up, config reload, shutdown)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edgedet.capture.source import FrameSource, OpenCvSource
from edgedet.capture.worker import CaptureWorker
from edgedet.config import CameraConfig
from edgedet.framequeue import CameraQueue, FrameHub
from edgedet.metrics import Metrics
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

    @property
    def names(self) -> list[str]:
        return list(self._running)

    def snapshot(self) -> dict[str, tuple[CameraQueue, CameraConfig]]:
        """Queue and config of every running camera, copied at once (safe from other threads)."""
        return {name: (r.queue, r.config) for name, r in list(self._running.items())}

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
            on_state=self.on_state,
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

    def restart(self, name: str, cam: CameraConfig) -> None:
        self.stop([name])
        self.start(name, cam)
