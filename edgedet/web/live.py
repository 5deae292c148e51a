"""What the pipeline publishes for the console: the newest processed frame of each camera.

``LiveFrames.publish`` is called by the inference workers (``results.ResultSink``) and only stores
references (no copy, no lock, no encoding). JPEGs are encoded when a client asks: at most once per
(frame, variant), shared by every viewer, under a per-camera lock that the pipeline never takes.
The web server encodes on one ``web-jpeg`` thread (``submit``): one thread's buffers, not one
heap arena per pool thread (measured: 4 viewers cost +65 MiB RSS through the server's thread pool).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

from edgedet.draw import annotate
from edgedet.types import Detections, Frame

__all__ = ["LIVE_QUALITY", "Jpeg", "LiveFrames"]

LIVE_QUALITY = 80
_KEEP_LATENCIES = 256
_MAX_CACHED = 64
MIN_HEIGHT, MAX_HEIGHT = 16, 4320
WEB_NICENESS = 10  # web threads (server loop, JPEG encoder) run at nice +10: the pipeline comes first


def lower_priority(niceness: int = WEB_NICENESS) -> None:
    """Make the calling thread yield to the pipeline: on a small box a web thread that takes a core
    stalls torch's OpenMP threads at their barrier (Linux: per-thread nice; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class _Latest(NamedTuple):
    dets: Detections
    image: np.ndarray


class Jpeg(NamedTuple):
    seq: int
    data: bytes


class LiveFrames:
    """The newest ``(Detections, image)`` per camera, end-to-end latencies, and JPEGs on demand."""

    def __init__(self, quality: int = LIVE_QUALITY) -> None:
        self.quality = quality
        self._latest: dict[str, _Latest] = {}
        self._done: dict[str, deque[tuple[int, float]]] = {}  # (monotonic ns when done, e2e seconds)
        self._cache: dict[tuple[str, bool, int | None], Jpeg] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.encoded = 0  # JPEGs encoded so far (all cameras, all variants)
        self._pool: ThreadPoolExecutor | None = None

    # ----------------------------------------------------------------- pipeline side (hot path)

    def publish(self, dets: Detections, frame: Frame, e2e_s: float) -> None:
        """Store references to the newest result of ``dets.camera``. Cheap: two dict/deque stores."""
        self._latest[dets.camera] = _Latest(dets, frame.image)
        done = self._done.get(dets.camera)
        if done is None:
            done = self._done.setdefault(dets.camera, deque(maxlen=_KEEP_LATENCIES))
        done.append((time.monotonic_ns(), e2e_s))

    # ----------------------------------------------------------------- reader side

    def latest(self, camera: str) -> Detections | None:
        item = self._latest.get(camera)
        return None if item is None else item.dets

    def image(self, camera: str) -> tuple[Detections, np.ndarray] | None:
        item = self._latest.get(camera)
        return None if item is None else (item.dets, item.image)

    def forget(self, camera: str) -> None:
        self._latest.pop(camera, None)
        self._done.pop(camera, None)

    def rates(self, camera: str, window_s: float = 10.0) -> dict[str, float | None]:
        """Processed fps and end-to-end p50 / p95 (ms) over the last ``window_s`` seconds."""
        done = list(self._done.get(camera, ()))
        now = time.monotonic_ns()
        recent = [(t, e2e) for t, e2e in done if now - t <= window_s * 1e9]
        if not recent:
            return {"fps_processed": 0.0, "e2e_p50_ms": None, "e2e_p95_ms": None}
        span_s = max((now - recent[0][0]) / 1e9, 1e-3)
        fps = (len(recent) - 1) / span_s if len(recent) > 1 else 0.0
        ordered = sorted(e2e for _, e2e in recent)

        def pct(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {"fps_processed": round(fps, 2), "e2e_p50_ms": pct(0.5), "e2e_p95_ms": pct(0.95)}

    def jpeg(self, camera: str, raw: bool = False, height: int | None = None) -> Jpeg | None:
        """The newest frame of ``camera`` as JPEG (boxes drawn unless ``raw``; downscaled to ``height``
        when smaller than the frame). Encoded once per frame and variant; None before the first frame."""
        item = self._latest.get(camera)
        if item is None:
            return None
        key = (camera, raw, height)
        with self._lock(camera):
            item = self._latest.get(camera, item)  # the newest, now that we hold the lock
            hit = self._cache.get(key)
            if hit is not None and hit.seq == item.dets.seq:
                return hit
            out = item.image if raw else annotate(item.image, item.dets.items)
            if height is not None and height < out.shape[0]:
                width = max(1, round(out.shape[1] * height / out.shape[0]))
                out = cv2.resize(out, (width, height), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if not ok:
                raise ValueError(f"JPEG encoding failed for an image of shape {out.shape}")
            jpeg = Jpeg(item.dets.seq, bytes(buf.tobytes()))
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = jpeg
            self.encoded += 1
            return jpeg

    def submit(self, camera: str, raw: bool = False, height: int | None = None) -> Future[Jpeg | None]:
        """``jpeg()`` on the ``web-jpeg`` thread (started on first use; ``close()`` stops it)."""
        if self._pool is None:
            with self._locks_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="web-jpeg", initializer=lower_priority)
        return self._pool.submit(self.jpeg, camera, raw, height)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _lock(self, camera: str) -> threading.Lock:
        lock = self._locks.get(camera)
        if lock is None:
            with self._locks_lock:
                lock = self._locks.setdefault(camera, threading.Lock())
        return lock
