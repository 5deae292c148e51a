"""Event clips: a per-camera ring of recent processed frames (JPEG, bounded in bytes), and MP4 files
from ``pre_capture_s`` before an event's ``new`` to ``post_capture_s`` after its ``end``.

Nothing here runs on the inference path: ``ClipRecorder.offer()`` only queues a reference to the
frame (bounded; a full queue drops the frame and counts it) and one thread draws the boxes with
their track ids, downscales, JPEG-encodes into the ring and writes finished clips.

Codec: H.264 (``avc1``) where OpenCV's FFmpeg has an encoder for it (a Raspberry Pi's
``h264_v4l2m2m``, a build with openh264), else MPEG-4 Part 2 (``mp4v``), which OpenCV can always
write. Cameras processed at a low rate (below ``timelapse_below_fps``) get a time-lapse at
``timelapse_fps`` instead of a real-time clip.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgedet.draw import annotate
from edgedet.types import Detection

log = logging.getLogger(__name__)

QUEUE_FRAMES = 64  # frames waiting for the clip thread before new ones are dropped
MIN_FPS = 1.0


@dataclass(frozen=True, slots=True)
class ClipSettings:
    pre_capture_s: float = 5.0
    post_capture_s: float = 5.0
    ring_mb: float = 16.0  # per camera, JPEG bytes
    height: int = 480  # frames are downscaled to this height (never up)
    quality: int = 75
    timelapse_below_fps: float = 0.5
    timelapse_fps: float = 5.0
    max_clip_s: float = 300.0  # a clip is cut (and a new one would need a new event) after this


@dataclass(slots=True)
class _Clip:
    event_id: str
    camera: str
    path: Path
    start_wall: float
    end_wall: float | None = None
    frames: list[tuple[float, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Offer:
    camera: str
    t_wall: float
    image: np.ndarray
    items: tuple[tuple[Detection, str | None], ...]


def _codec() -> tuple[str, str]:
    """The best fourcc this OpenCV can write to .mp4: ``avc1`` (H.264) if it opens, else ``mp4v``."""
    with tempfile.TemporaryDirectory() as tmp:
        for fourcc in ("avc1", "mp4v"):
            writer = cv2.VideoWriter(str(Path(tmp) / "probe.mp4"), cv2.VideoWriter.fourcc(*fourcc), 5, (64, 64))
            ok = writer.isOpened()
            writer.release()
            if ok:
                return fourcc, "H.264" if fourcc == "avc1" else "MPEG-4 Part 2"
    return "mp4v", "MPEG-4 Part 2"


def write_mp4(path: Path, frames: Sequence[tuple[float, bytes]], fps: float, fourcc: str = "mp4v") -> int:
    """Decode the JPEG frames and write them to ``path`` atomically; returns the frame count written."""
    decoded = [cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) for _, jpeg in frames]
    images: list[np.ndarray] = [im for im in decoded if im is not None]
    if not images:
        return 0
    h, w = images[0].shape[:2]
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*fourcc), max(MIN_FPS, fps), (w, h))
    try:
        if not writer.isOpened():
            raise OSError(f"cannot write {path} (fourcc {fourcc})")
        for im in images:
            writer.write(im if im.shape[:2] == (h, w) else cv2.resize(im, (w, h)))
    finally:
        writer.release()
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return len(images)


class FrameRing:
    """The recent JPEG frames of one camera, oldest dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[tuple[float, bytes]] = deque()
        self._bytes = 0

    def add(self, t_wall: float, jpeg: bytes) -> None:
        self._frames.append((t_wall, jpeg))
        self._bytes += len(jpeg)
        while self._bytes > self.max_bytes and len(self._frames) > 1:
            _, old = self._frames.popleft()
            self._bytes -= len(old)

    def since(self, t_wall: float) -> list[tuple[float, bytes]]:
        return [(t, j) for t, j in self._frames if t >= t_wall]

    @property
    def nbytes(self) -> int:
        return self._bytes


class ClipRecorder(threading.Thread):
    """Rings per camera, clips per event, one thread. ``on_written(camera, event_id, path, frames)``
    is told about each finished clip (the event stage records it; the store applies retention)."""

    def __init__(self, directory: str | os.PathLike[str], settings: ClipSettings, stop: threading.Event | None = None,
                 *, on_written: Callable[[str, str, Path, int], None] | None = None,
                 on_drop: Callable[[str], None] | None = None) -> None:
        super().__init__(name="clips", daemon=True)
        self.directory = Path(directory)
        self.settings = settings
        self.stop_event = stop if stop is not None else threading.Event()
        self.on_written = on_written
        self.on_drop = on_drop
        self.fourcc, self.codec = _codec()
        self._queue: queue.Queue[_Offer | tuple[str, str, float | None, float] | None] = queue.Queue(QUEUE_FRAMES)
        self._rings: dict[str, FrameRing] = {}
        self._clips: dict[str, _Clip] = {}
        self._rates: dict[str, deque[float]] = {}
        self.dropped = 0
        self.written = 0

    # ------------------------------------------------------------ called from other threads

    def offer(self, camera: str, t_wall: float, image: np.ndarray,
              items: Sequence[tuple[Detection, str | None]]) -> None:
        """Queue a processed frame (never blocks: a full queue drops it and counts the drop)."""
        try:
            self._queue.put_nowait(_Offer(camera, t_wall, image, tuple(items)))
        except queue.Full:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(camera)

    def event_new(self, camera: str, event_id: str, start_wall: float) -> None:
        self._control(("new", f"{camera}\0{event_id}", None, start_wall))

    def event_end(self, camera: str, event_id: str, end_wall: float) -> None:
        self._control(("end", f"{camera}\0{event_id}", end_wall, end_wall))

    def _control(self, item: tuple[str, str, float | None, float]) -> None:
        try:  # waits for room behind at most QUEUE_FRAMES frames, never for long
            self._queue.put(item, timeout=2.0)
        except queue.Full:
            log.warning("clip recorder is behind; no clip for %s", item[1].replace("\0", " event "))

    def path_for(self, camera: str, event_id: str) -> Path:
        return self.directory / camera / f"{event_id}.mp4"

    def close(self, timeout: float = 10.0) -> None:
        """Finish every open clip, then stop the thread."""
        if not self.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            self.stop_event.set()
        self.join(timeout)

    # ------------------------------------------------------------ the clip thread

    def run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.stop_event.is_set():
                    item = None
                else:
                    self._finish_overdue(time.time())  # the camera stopped sending frames
                    continue
            try:
                if item is None:
                    for key in list(self._clips):
                        self._finish(key)
                    return
                if isinstance(item, _Offer):
                    self._frame(item)
                else:
                    self._event(*item)
            except Exception:  # noqa: BLE001 - a clip is never worth the thread (disk full, bad frame)
                log.warning("clip recorder: %s failed", type(item).__name__, exc_info=True)

    def _frame(self, offer: _Offer) -> None:
        s = self.settings
        image = annotate(offer.image, [d for d, _ in offer.items])
        for det, track_id in offer.items:
            if track_id is not None:
                x1, y1 = int(det.xyxy[0]), int(det.xyxy[3])
                cv2.putText(image, track_id.rsplit("-", 1)[-1], (x1 + 2, max(12, y1 - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        h, w = image.shape[:2]
        if h > s.height:
            image = cv2.resize(image, (max(2, round(w * s.height / h / 2) * 2), s.height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, s.quality])
        if not ok:
            return
        jpeg = buf.tobytes()
        ring = self._rings.setdefault(offer.camera, FrameRing(int(s.ring_mb * 1024 * 1024)))
        ring.add(offer.t_wall, jpeg)
        rate = self._rates.setdefault(offer.camera, deque(maxlen=20))
        rate.append(offer.t_wall)
        for key, clip in list(self._clips.items()):
            if clip.camera != offer.camera:
                continue
            clip.frames.append((offer.t_wall, jpeg))
            if clip.end_wall is not None:
                done_at = clip.end_wall + s.post_capture_s
            else:
                done_at = clip.start_wall + s.max_clip_s
            if offer.t_wall >= done_at:
                self._finish(key)

    def _event(self, kind: str, key: str, end_wall: float | None, t_wall: float) -> None:
        camera, event_id = key.split("\0", 1)
        if kind == "new":
            ring = self._rings.get(camera)
            frames = ring.since(t_wall - self.settings.pre_capture_s) if ring is not None else []
            self._clips[key] = _Clip(event_id, camera, self.path_for(camera, event_id), t_wall, frames=frames)
        elif key in self._clips:
            self._clips[key].end_wall = end_wall

    def fps(self, camera: str) -> float:
        """The camera's processed-frame rate over its last frames (for time-lapse decisions)."""
        times = self._rates.get(camera)
        if not times or len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _finish_overdue(self, now_wall: float) -> None:
        for key, clip in list(self._clips.items()):
            if clip.end_wall is not None and now_wall >= clip.end_wall + self.settings.post_capture_s + 1.0:
                self._finish(key)

    def _finish(self, key: str) -> None:
        clip = self._clips.pop(key)
        if not clip.frames:
            return
        rate = self.fps(clip.camera)
        s = self.settings
        fps = s.timelapse_fps if rate < s.timelapse_below_fps else rate
        clip.path.parent.mkdir(parents=True, exist_ok=True)
        n = write_mp4(clip.path, clip.frames, fps, self.fourcc)
        self.written += 1
        lapse = " (time-lapse)" if rate < s.timelapse_below_fps else ""
        log.info("clip %s: %d frame(s) at %.1f fps%s", clip.path, n, fps, lapse)
        if self.on_written is not None:
            self.on_written(clip.camera, clip.event_id, clip.path, n)
