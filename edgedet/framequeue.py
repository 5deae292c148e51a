"""Bounded newest-frame queues, one per camera, served round-robin to inference workers.

All queues of a ``FrameHub`` share one condition variable, so a worker blocked in
``FrameHub.get()`` wakes for a frame from any camera, and cameras take turns: a flooded
camera never starves the others (a stalled one simply has nothing to give).

A live camera's queue drops its OLDEST frame when full (no lag builds up); a file read
with ``realtime: false`` uses back-pressure instead (``put`` waits, nothing is dropped).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from edgedet.metrics import Metrics
from edgedet.types import Frame

# Fresh-frame policy (live cameras with queue_size 1): a worker that finds the queued frame older
# than FRESH_FRACTION of the camera's frame period, with no other camera waiting, waits for the next
# frame (at most FRESH_MAX_WAIT_S) instead. Median queue wait drops from ~P/2 to ~P/10.
FRESH_FRACTION = 0.6
FRESH_MAX_WAIT_S = 0.1
_PERIOD_RESET_NS = 1_000_000_000  # an arrival gap above this (reconnect) restarts the estimate

# Longest single wait on the condition: bounds how long a stop Event (which cannot notify
# the condition) goes unnoticed by a blocked get()/put().
_WAIT_SLICE_S = 0.05


class CameraQueue:
    """One camera's bounded queue. Create it with ``FrameHub.add_camera``."""

    def __init__(self, hub: FrameHub, name: str, maxsize: int, backpressure: bool) -> None:
        self._hub = hub
        self.name = name
        self.maxsize = maxsize
        self.backpressure = backpressure
        self._frames: deque[Frame] = deque()
        self._closed = False
        self._last_put_ns: int | None = None
        self.period_ns: float | None = None  # smoothed interval between delivered frames
        self._drop_counter = hub._metrics.frames_dropped.labels(camera=name, reason="queue_full")
        self._depth_gauge = hub._metrics.queue_depth.labels(camera=name)

    def put(self, frame: Frame) -> bool:
        """Queue ``frame``; return False when it was not queued (queue closed, hub stopped).

        Full, no back-pressure: the oldest queued frame is dropped and counted as
        ``frames_dropped{reason="queue_full"}``. Full with back-pressure: wait (in bounded
        slices, watching stop) until a worker takes a frame; never drops.
        """
        if frame.camera != self.name:
            raise ValueError(f"frame for camera {frame.camera!r} put into queue {self.name!r}")
        hub = self._hub
        with hub._cond:
            while True:
                if self._closed or hub._closed or hub._stop.is_set():
                    return False
                if len(self._frames) < self.maxsize:
                    break
                if not self.backpressure:
                    self._frames.popleft()
                    self._drop_counter.inc()
                    break
                hub._cond.wait(_WAIT_SLICE_S)
            self._frames.append(frame)
            self._update_depth()
            self._track_period(frame.t_mono_ns)
            hub._cond.notify_all()
            return True

    def _track_period(self, t_ns: int) -> None:  # caller holds the hub lock
        last, self._last_put_ns = self._last_put_ns, t_ns
        if last is None:
            return
        dt = t_ns - last
        if not 0 < dt < _PERIOD_RESET_NS:  # first frame after a reconnect: start again
            self.period_ns = None
        elif self.period_ns is None:
            self.period_ns = float(dt)
        else:
            self.period_ns = 0.8 * self.period_ns + 0.2 * dt

    def _wants_fresher(self, frame: Frame, now_ns: int) -> float:  # caller holds the hub lock
        """Seconds worth waiting for a newer frame than ``frame`` (0: take it)."""
        if self.backpressure or self.maxsize != 1 or self.period_ns is None or self._closed:
            return 0.0
        age = now_ns - frame.t_mono_ns
        if age <= FRESH_FRACTION * self.period_ns:
            return 0.0
        return min(FRESH_MAX_WAIT_S, max(0.0, (self.period_ns * 1.25 - age) / 1e9))

    def close(self) -> None:
        """Mark the camera ended (EOF). Frames already queued are still delivered. Final."""
        with self._hub._cond:
            self._closed = True
            self._hub._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._hub._cond:
            return len(self._frames)

    def _update_depth(self) -> None:  # caller holds the hub lock
        self._depth_gauge.set(len(self._frames))


class FrameHub:
    """The set of camera queues that inference workers read from."""

    def __init__(self, stop: threading.Event, metrics: Metrics) -> None:
        self._stop = stop
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queues: list[CameraQueue] = []
        self._by_name: dict[str, CameraQueue] = {}
        self._next = 0  # index of the camera served first by the next get()
        self._closed = False
        self._held = 0  # holding() depth

    def add_camera(self, name: str, maxsize: int = 1, backpressure: bool = False) -> CameraQueue:
        if maxsize < 1:
            raise ValueError(f"queue maxsize must be >= 1 (got {maxsize})")
        with self._cond:
            if name in self._by_name:
                raise ValueError(f"camera {name!r} already has a queue")
            self._metrics.init_camera(name)
            queue = CameraQueue(self, name, maxsize, backpressure)
            self._queues.append(queue)
            self._by_name[name] = queue
            return queue

    def remove_camera(self, name: str) -> None:
        """Forget a camera (config reload): its queued frames are discarded, a blocked ``put`` on
        its queue returns False, and the name may be added again."""
        with self._cond:
            queue = self._by_name.pop(name, None)
            if queue is None:
                return
            queue._closed = True
            queue._frames.clear()
            queue._update_depth()
            index = self._queues.index(queue)
            self._queues.remove(queue)
            if self._next > index:
                self._next -= 1
            if self._queues:
                self._next %= len(self._queues)
            else:
                self._next = 0
            self._cond.notify_all()

    def get(self, timeout: float | None) -> Frame | None:
        """Next frame, round-robin over cameras that have one.

        Returns None on timeout, when the stop Event is set or the hub is closed. A None
        with ``ended()`` True means no frame will ever come again.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed or self._stop.is_set():
                    return None
                frame = self._take_round_robin()
                if frame is not None:
                    self._cond.notify_all()  # a back-pressured put may proceed
                    return self._fresher(frame)
                if deadline is None:
                    wait = _WAIT_SLICE_S
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = min(remaining, _WAIT_SLICE_S)
                self._cond.wait(wait)

    def _fresher(self, frame: Frame) -> Frame:  # caller holds the lock
        """``frame``, or the next frame of its camera when ``frame`` is stale and the next one is
        due soon and no other camera has a frame waiting (the fresh-frame policy)."""
        queue = self._by_name.get(frame.camera)
        if queue is None or any(q._frames for q in self._queues):
            return frame
        wait = queue._wants_fresher(frame, time.monotonic_ns())
        if wait <= 0:
            return frame
        deadline = time.monotonic() + wait
        while not queue._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed or self._stop.is_set() or queue._closed:
                return frame
            self._cond.wait(min(remaining, _WAIT_SLICE_S))
        newer = queue._frames.popleft()
        queue._update_depth()
        queue._drop_counter.inc()  # the stale frame was superseded, as by a newer put
        return newer

    def _take_round_robin(self) -> Frame | None:  # caller holds the lock
        count = len(self._queues)
        for offset in range(count):
            index = (self._next + offset) % count
            queue = self._queues[index]
            if queue._frames:
                frame = queue._frames.popleft()
                queue._update_depth()
                self._next = (index + 1) % count
                return frame
        return None

    def ended(self) -> bool:
        """True when the hub is closed, or every camera finished: it has cameras, each queue is closed
        (end of file) and empty, and no reload holds it (``holding``).

        No camera at all is not "finished": a reload restarts every camera of a one-camera node by
        removing its queue and adding a new one, and the run must go on meanwhile.
        """
        with self._cond:
            if self._closed:
                return True
            if self._held or not self._queues:
                return False
            return all(q._closed and not q._frames for q in self._queues)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """While cameras are stopped and started (a reload), ``ended()`` is False."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1

    def close(self) -> None:
        """Shut the hub: every blocked ``get``/``put`` returns at once (None / False)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def depth(self, name: str) -> int:
        """Frames waiting for camera ``name`` (KeyError for an unknown camera)."""
        with self._cond:
            return len(self._by_name[name]._frames)

    @property
    def cameras(self) -> list[str]:
        with self._cond:
            return [q.name for q in self._queues]
