"""Confirmed events per camera and label: K-of-N start, rate-limited updates, timed end, snapshots.

An :class:`EventTracker` (one per camera) turns the per-frame :class:`~edgedet.types.Detections`
into ``new`` / ``update`` / ``end`` :class:`EventMessage` records with a stable id:

* A detection **qualifies** when its score is >= ``min_score``, its box covers >= ``min_area`` of
  the frame, its box centre is outside every mask and -- when the camera has zones -- its
  bottom-centre point (where it touches the ground) is inside at least one zone. Points on a
  polygon's edge count as inside.
* An event **starts** (``new``) when a label qualifies in at least ``confirm_frames`` of the last
  ``window_frames`` processed frames. A single-frame glare never starts one.
* While active, any qualifying frame keeps it alive (hysteresis). It **updates** when the top
  score rose by >= 0.05 over the last published top score, when the box moved (IoU with the last
  published box < 0.5) or a new zone was entered -- at most once per ``update_interval_s``.
* It **ends** ``clear_after_s`` after the last qualifying frame, from :meth:`EventTracker.update`
  or :meth:`EventTracker.tick` (so it ends when frames stop), or at :meth:`EventTracker.close`.

Durations use the injected ``clock``; payload times are the frames' wall times (``t_wall``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from edgedet.config import CameraConfig, Config, EventsConfig, EventThresholds, Polygon
from edgedet.draw import annotate
from edgedet.preprocess import as_bgr
from edgedet.types import Detection, Detections

__all__ = [
    "EventMessage",
    "EventRules",
    "EventTracker",
    "EventType",
    "SnapshotStore",
    "Zone",
    "active_payload",
    "box_iou",
    "default_event_id",
    "load_schema",
    "zones_from_config",
]

log = logging.getLogger(__name__)

EventType = Literal["new", "update", "end"]
IdFactory = Callable[[float, str, str], str]

UPDATE_SCORE_STEP = 0.05  # publish an update when the top score rose this much
UPDATE_MIN_IOU = 0.5  # ... or the box overlaps the last published one less than this
JPEG_QUALITY = 85
_EPS = 1e-9
_ID_RE = re.compile(r"[A-Za-z0-9._-]+")


def _iso_utc(t_wall: float) -> str:
    stamp = datetime.fromtimestamp(t_wall, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def default_event_id(start_wall: float, camera: str, label: str) -> str:
    """``<start epoch seconds>-<6 random hex digits>``, e.g. ``1714564800.123456-3fa9c1``."""
    del camera, label  # unique enough without them, and always safe as a file name
    return f"{start_wall:.6f}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True, slots=True)
class Zone:
    """A named polygon; ``pixels`` False means coordinates are fractions of the frame size."""

    name: str
    points: tuple[tuple[float, float], ...]
    pixels: bool = False

    def __post_init__(self) -> None:
        if len(self.points) < 3:
            raise ValueError(f"Zone {self.name!r} needs at least 3 points (got {len(self.points)})")

    @classmethod
    def from_polygon(cls, name: str, polygon: Polygon) -> Zone:
        return cls(name, polygon.points, polygon.pixels)

    def contains(self, x: float, y: float, width: int, height: int) -> bool:
        """True when pixel point (x, y) of a ``width`` x ``height`` frame is inside or on an edge."""
        sx, sy = (1.0, 1.0) if self.pixels else (float(width), float(height))
        pts = [(px * sx, py * sy) for px, py in self.points]
        tolerance = 1e-6 * max(1.0, sx, sy, abs(x), abs(y))
        inside = False
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
            length = abs(x2 - x1) + abs(y2 - y1)
            if (abs(cross) <= tolerance * max(length, 1.0)
                    and min(x1, x2) - tolerance <= x <= max(x1, x2) + tolerance
                    and min(y1, y2) - tolerance <= y <= max(y1, y2) + tolerance):
                return True  # on the edge
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


def zones_from_config(camera: CameraConfig) -> tuple[list[Zone], list[Zone]]:
    """``(zones, masks)`` of a camera; masks are named ``mask0``, ``mask1``, ..."""
    zones = [Zone.from_polygon(name, poly) for name, poly in camera.zones.items()]
    masks = [Zone.from_polygon(f"mask{i}", poly) for i, poly in enumerate(camera.masks)]
    return zones, masks


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (1.0 for two equal empty boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    if union <= 0.0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


# --------------------------------------------------------------------------- rules


class EventRules:
    """Thresholds per label: ``labels[label]`` when given, else ``default``."""

    def __init__(self, default: EventThresholds | None = None,
                 labels: Mapping[str, EventThresholds] | None = None) -> None:
        self.default = default if default is not None else EventThresholds()
        self.labels = dict(labels or {})
        for label, rules in [("default", self.default), *self.labels.items()]:
            if not 1 <= rules.confirm_frames <= rules.window_frames:
                raise ValueError(f"event rules for {label}: need 1 <= confirm_frames <= window_frames "
                                 f"(got {rules.confirm_frames} of {rules.window_frames})")

    @classmethod
    def from_config(cls, events: EventsConfig) -> EventRules:
        return cls(events.default, {label: events.thresholds(label) for label in events.labels})

    def for_label(self, label: str) -> EventThresholds:
        return self.labels.get(label, self.default)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One lifecycle message. ``snapshot_jpeg`` is set only when this message wrote a new snapshot.

    ``score`` / ``box``: the best qualifying detection of the latest qualifying frame;
    ``top_score``: the best score of the event; ``snapshot``: path of its latest snapshot file.
    ``end_time`` (``end`` only) is when the label was last seen.
    """

    type: EventType
    id: str
    camera: str
    label: str
    start_time: str
    end_time: str | None
    score: float
    top_score: float
    box: tuple[float, float, float, float]
    zones: tuple[str, ...]
    frames_seen: int
    snapshot: str | None
    snapshot_jpeg: bytes | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON fields (everything except ``snapshot_jpeg``)."""
        return {
            "type": self.type,
            "id": self.id,
            "camera": self.camera,
            "label": self.label,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "score": round(float(self.score), 4),
            "top_score": round(float(self.top_score), 4),
            "box": [round(float(v), 1) for v in self.box],
            "zones": list(self.zones),
            "frames_seen": int(self.frames_seen),
            "snapshot": self.snapshot,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the event message; a fresh dict per call."""
    text = resources.files("edgedet.schemas").joinpath("event.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def active_payload(msg: EventMessage) -> Literal["ON", "OFF"]:
    """The retained ``<camera>/<label>/active`` value after ``msg``."""
    return "OFF" if msg.type == "end" else "ON"


# --------------------------------------------------------------------------- snapshots


class SnapshotStore:
    """JPEG snapshots under ``directory/<camera>/<event id>-<n>.jpg``, oldest deleted first.

    At most ``keep`` files and ``max_mb`` MiB in all (the newest file is always kept). Files are
    written atomically (temporary file + rename). Safe to share between trackers and threads.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int, max_mb: float, crop: bool = False,
                 quality: int = JPEG_QUALITY) -> None:
        if keep < 1:
            raise ValueError(f"SnapshotStore.keep must be >= 1 (got {keep})")
        if max_mb <= 0:
            raise ValueError(f"SnapshotStore.max_mb must be > 0 (got {max_mb})")
        self.directory = Path(directory)
        self.keep = keep
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.crop = crop
        self.quality = quality
        self._lock = threading.Lock()
        self._files: deque[tuple[Path, int]] = deque()
        self._bytes = 0
        self._failing = False
        self._scan()

    @classmethod
    def from_config(cls, cfg: Config) -> SnapshotStore | None:
        """The store for ``cfg`` (under ``<state_dir>/snapshots``), or None when disabled."""
        snaps = cfg.events.snapshots
        if not (cfg.events.enabled and snaps.enabled):
            return None
        return cls(Path(cfg.state_dir) / "snapshots", snaps.keep, snaps.max_mb, snaps.crop)

    def files(self) -> list[Path]:
        """The retained snapshot files, oldest first."""
        with self._lock:
            return [path for path, _ in self._files]

    def save(self, camera: str, event_id: str, n: int, image: np.ndarray,
             det: Detection) -> tuple[str | None, bytes]:
        """Encode and store one snapshot; ``(path or None when it could not be written, JPEG)``."""
        jpeg = self.encode(image, det)
        path = self.directory / camera / f"{event_id}-{n}.jpg"
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                with open(tmp, "wb") as fh:
                    fh.write(jpeg)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError as exc:
                if not self._failing:
                    log.warning("cannot write snapshot %s: %s", path, exc.strerror or exc)
                self._failing = True
                return None, jpeg
            if self._failing:
                log.info("snapshots are written again (%s)", path)
                self._failing = False
            self._files.append((path, len(jpeg)))
            self._bytes += len(jpeg)
            self._prune()
        return str(path), jpeg

    def encode(self, image: np.ndarray, det: Detection) -> bytes:
        """JPEG of ``image`` with ``det`` drawn, or of the box alone when ``crop`` is set."""
        if self.crop:
            bgr = as_bgr(image)
            h, w = bgr.shape[:2]
            x1, y1, x2, y2 = det.xyxy
            left, top = min(max(int(x1), 0), w - 1), min(max(int(y1), 0), h - 1)
            right, bottom = max(min(int(np.ceil(x2)), w), left + 1), max(min(int(np.ceil(y2)), h), top + 1)
            out = bgr[top:bottom, left:right]
        else:
            out = annotate(image, [det])
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError(f"JPEG encoding failed for an image of shape {out.shape}")
        return bytes(buf.tobytes())

    def _scan(self) -> None:
        if not self.directory.is_dir():
            return
        found: list[tuple[float, str, Path, int]] = []
        for path in self.directory.glob("*/*"):
            try:
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # left over from a crash during a write
                elif path.suffix == ".jpg" and path.is_file():
                    st = path.stat()
                    found.append((st.st_mtime, path.name, path, st.st_size))
            except OSError as exc:
                log.warning("cannot inspect snapshot %s: %s", path, exc.strerror or exc)
        for _, _, path, size in sorted(found):
            self._files.append((path, size))
            self._bytes += size
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        while len(self._files) > 1 and (len(self._files) > self.keep or self._bytes > self.max_bytes):
            path, size = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", path, exc.strerror or exc)


# --------------------------------------------------------------------------- tracker state


@dataclass(slots=True)
class _Hit:
    """The best qualifying detection of one frame."""

    seq: int
    det: Detection
    zones: tuple[str, ...]
    t_wall: float


@dataclass(slots=True)
class _Best:
    """The best detection so far and a copy of its frame (until the snapshot is written)."""

    seq: int
    det: Detection
    image: np.ndarray | None


@dataclass(slots=True)
class _Event:
    id: str
    label: str
    start_wall: float
    last_hit_at: float  # clock
    last_seen_wall: float
    current: Detection
    best: _Best
    zones: dict[str, None]
    frames_seen: int
    published_at: float = 0.0  # clock
    published_top: float = 0.0
    published_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    published_zones: int = 0
    snapshot: str | None = None
    snapshot_score: float = -1.0
    snapshots_taken: int = 0


@dataclass(slots=True)
class _Label:
    """One label's K-of-N window (``None`` = a frame without a qualifying detection)."""

    window: deque[_Hit | None]
    best: _Best | None = None  # before the event: the best hit that is still in the window
    event: _Event | None = None

    def hits(self) -> list[_Hit]:
        return [h for h in self.window if h is not None]


# --------------------------------------------------------------------------- tracker


class EventTracker:
    """Events of one camera. Thread-safe: ``update``, ``tick`` and ``close`` may race."""

    def __init__(
        self,
        camera: str,
        rules: EventRules,
        zones: Iterable[Zone] = (),
        masks: Iterable[Zone] = (),
        clock: Callable[[], float] = time.time,
        id_factory: IdFactory | None = None,
        *,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.camera = camera
        self.rules = rules
        self.zones = tuple(zones)
        self.masks = tuple(masks)
        self._clock = clock
        self._id_factory = id_factory or default_event_id
        self._snapshots = snapshots
        self._labels: dict[str, _Label] = {}
        self._recent_seqs: deque[int] = deque(maxlen=64)  # duplicate detection
        self._last_frame_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, camera: str, cfg: Config, snapshots: SnapshotStore | None = None,
                    clock: Callable[[], float] = time.time) -> EventTracker:
        zones, masks = zones_from_config(cfg.cameras[camera])
        return cls(camera, EventRules.from_config(cfg.events), zones, masks, clock, snapshots=snapshots)

    # ----------------------------------------------------------------- public API

    def update(self, dets: Detections, image: np.ndarray | None) -> list[EventMessage]:
        """Feed one processed frame (also one without detections); returns the messages it caused.

        Frames are counted in arrival order: with several inference workers a frame may finish
        just after a later one, and still counts (the K-of-N window is about time, not seq). A
        frame whose seq was already seen (a duplicate) is ignored (returns []).
        """
        if dets.camera != self.camera:
            raise ValueError(f"EventTracker for camera {self.camera!r} got detections of {dets.camera!r}")
        with self._lock:
            if dets.seq in self._recent_seqs:
                log.debug("camera %s: frame %d seen before; ignored for events", self.camera, dets.seq)
                return []
            self._recent_seqs.append(dets.seq)
            now = self._clock()
            gap = None if self._last_frame_at is None else now - self._last_frame_at
            self._last_frame_at = now
            out = self._expire(now)
            hits = self._qualifying(dets)
            for label in sorted(set(self._labels) | set(hits)):
                state = self._labels.get(label)
                rules = self.rules.for_label(label)
                if state is None:
                    state = self._labels[label] = _Label(deque(maxlen=rules.window_frames))
                elif state.event is None and gap is not None and gap > rules.clear_after_s:
                    state.window.clear()  # the stream paused: old hits do not count towards a new event
                    state.best = None
                msg = self._step(label, state, rules, hits.get(label), image, now)
                if msg is not None:
                    out.append(msg)
                if state.event is None and not state.hits():
                    del self._labels[label]
            return out

    def reconfigure(self, rules: EventRules, zones: Iterable[Zone], masks: Iterable[Zone]) -> None:
        """New thresholds and zones (config reload); active events carry on under the new rules."""
        with self._lock:
            self.rules, self.zones, self.masks = rules, tuple(zones), tuple(masks)

    def tick(self, now: float | None = None) -> list[EventMessage]:
        """End events whose ``clear_after_s`` has passed; call periodically (``now``: the tracker's clock)."""
        with self._lock:
            return self._expire(self._clock() if now is None else now)

    def close(self, now: float | None = None) -> list[EventMessage]:
        """End every active event (shutdown); the tracker stays usable."""
        del now  # an end message carries the last-seen time, not the time of closing
        with self._lock:
            out = [self._end(state) for state in self._labels.values() if state.event is not None]
            self._labels.clear()
            return out

    def active(self) -> dict[str, EventMessage]:
        """Label -> the current state of its active event (``type`` ``update``, no JPEG bytes)."""
        with self._lock:
            return {label: self._message("update", state.event)
                    for label, state in sorted(self._labels.items()) if state.event is not None}

    # ----------------------------------------------------------------- internals

    def _qualifying(self, dets: Detections) -> dict[str, _Hit]:
        """Per label, the best qualifying detection of this frame and the zones it (or others) touched."""
        best: dict[str, Detection] = {}
        zones: dict[str, dict[str, None]] = {}
        frame_area = float(dets.width) * float(dets.height)
        for det in dets.items:
            rules = self.rules.for_label(det.label)
            if det.score < rules.min_score:
                continue
            x1, y1, x2, y2 = (float(v) for v in det.xyxy)
            area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            if frame_area <= 0 or area / frame_area < rules.min_area:
                continue
            cx = (x1 + x2) / 2.0
            if any(m.contains(cx, (y1 + y2) / 2.0, dets.width, dets.height) for m in self.masks):
                continue
            inside = [z.name for z in self.zones if z.contains(cx, y2, dets.width, dets.height)]
            if self.zones and not inside:
                continue
            zones.setdefault(det.label, {}).update(dict.fromkeys(inside))
            if det.label not in best or det.score > best[det.label].score:
                best[det.label] = det
        return {label: _Hit(dets.seq, det, tuple(zones[label]), dets.t_wall) for label, det in best.items()}

    def _step(self, label: str, state: _Label, rules: EventThresholds, hit: _Hit | None,
              image: np.ndarray | None, now: float) -> EventMessage | None:
        event = state.event
        if event is None:
            state.window.append(hit)
            hits = state.hits()
            if state.best is not None and all(h.seq != state.best.seq for h in hits):
                state.best = None  # slid out of the window: it is no evidence for this event
            state.best = self._better(state.best, hit, image)
            if hit is None or len(hits) < rules.confirm_frames:
                return None
            return self._start(label, state, hits, hit, now)
        if hit is not None:
            event.last_hit_at, event.last_seen_wall = now, hit.t_wall
            event.current = hit.det
            event.frames_seen += 1
            event.zones.update(dict.fromkeys(hit.zones))
            event.best = self._better(event.best, hit, image) or event.best
        if now - event.published_at < rules.update_interval_s - _EPS:
            return None
        changed = (
            event.best.det.score >= event.published_top + UPDATE_SCORE_STEP - _EPS
            or box_iou(event.current.xyxy, event.published_box) < UPDATE_MIN_IOU
            or len(event.zones) > event.published_zones
        )
        return self._publish("update", event, now) if changed else None

    def _better(self, best: _Best | None, hit: _Hit | None, image: np.ndarray | None) -> _Best | None:
        """``hit`` (with a copy of its frame when snapshots are on) if it beats ``best``."""
        if hit is None or (best is not None and hit.det.score <= best.det.score):
            return best
        copy = image.copy() if image is not None and self._snapshots is not None else None
        return _Best(hit.seq, hit.det, copy)

    def _start(self, label: str, state: _Label, hits: list[_Hit], hit: _Hit, now: float) -> EventMessage:
        assert state.best is not None  # the current frame is a hit, so there is a best one
        start_wall = hits[0].t_wall
        event_id = self._id_factory(start_wall, self.camera, label)
        if not _ID_RE.fullmatch(event_id):
            raise ValueError(f"event id must use only letters, digits, '.', '_' and '-' (got {event_id!r})")
        zones: dict[str, None] = {}
        for h in hits:
            zones.update(dict.fromkeys(h.zones))
        state.event = _Event(
            id=event_id, label=label, start_wall=start_wall, last_hit_at=now, last_seen_wall=hit.t_wall,
            current=hit.det, best=state.best, zones=zones, frames_seen=len(hits),
        )
        state.window.clear()
        state.best = None
        log.info("camera %s: event %s started: %s (score %.2f)", self.camera, event_id, label, hit.det.score)
        return self._publish("new", state.event, now)

    def _expire(self, now: float) -> list[EventMessage]:
        out = []
        for label, state in list(self._labels.items()):
            event = state.event
            if event is None:
                continue
            if now < event.last_hit_at:  # the clock stepped back: restart the timer
                event.last_hit_at = now
            if now - event.last_hit_at >= self.rules.for_label(label).clear_after_s - _EPS:
                out.append(self._end(state))
                del self._labels[label]
        return out

    def _end(self, state: _Label) -> EventMessage:
        event = state.event
        assert event is not None
        state.event = None
        log.info("camera %s: event %s ended: %s (top score %.2f, %d frames)", self.camera, event.id,
                 event.label, event.best.det.score, event.frames_seen)
        return self._publish("end", event, None)

    def _publish(self, kind: EventType, event: _Event, now: float | None) -> EventMessage:
        jpeg = self._snapshot(event)
        if now is not None:
            event.published_at = now
            event.published_top = event.best.det.score
            event.published_box = event.current.xyxy
            event.published_zones = len(event.zones)
        return self._message(kind, event, jpeg)

    def _snapshot(self, event: _Event) -> bytes | None:
        best = event.best
        if self._snapshots is None or best.image is None or best.det.score <= event.snapshot_score:
            return None
        event.snapshots_taken += 1
        try:
            path, jpeg = self._snapshots.save(self.camera, event.id, event.snapshots_taken, best.image, best.det)
        except Exception:  # noqa: BLE001 -- a bad image must not stop the event pipeline
            log.exception("camera %s: snapshot of event %s failed", self.camera, event.id)
            return None
        event.snapshot_score = best.det.score
        if path is not None:
            event.snapshot = path
        best.image = None  # encoded: the frame copy is not needed any more
        return jpeg

    def _message(self, kind: EventType, event: _Event, jpeg: bytes | None = None) -> EventMessage:
        x1, y1, x2, y2 = (float(v) for v in event.current.xyxy)
        return EventMessage(
            type=kind,
            id=event.id,
            camera=self.camera,
            label=event.label,
            start_time=_iso_utc(event.start_wall),
            end_time=_iso_utc(event.last_seen_wall) if kind == "end" else None,
            score=float(event.current.score),
            top_score=float(event.best.det.score),
            box=(x1, y1, x2, y2),
            zones=tuple(event.zones),
            frames_seen=event.frames_seen,
            snapshot=event.snapshot,
            snapshot_jpeg=jpeg,
        )


# --------------------------------------------------------------------------- daemon stage


class EventPublisher(Protocol):
    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool: ...

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


class EventStage:
    """Feeds every processed frame to its camera's tracker and publishes what comes out.

    Topics: ``<base>/<camera>/events`` (JSON, QoS 1, through the outbox), ``<base>/<camera>/snapshot``
    (JPEG, retained) and ``<base>/<camera>/<label>/active`` (``ON``/``OFF``, retained).
    """

    def __init__(self, trackers: dict[str, EventTracker], publisher: EventPublisher, base_topic: str,
                 metrics: Any = None) -> None:
        self.trackers = trackers
        self.publisher = publisher
        self.base = base_topic
        self.metrics = metrics

    @classmethod
    def from_config(cls, cfg: Config, cameras: Iterable[str], publisher: EventPublisher, base_topic: str,
                    metrics: Any = None) -> EventStage | None:
        if not cfg.events.enabled:
            return None
        store = SnapshotStore.from_config(cfg)
        trackers = {name: EventTracker.from_config(name, cfg, store) for name in cameras}
        return cls(trackers, publisher, base_topic, metrics)

    def reconfigure(self, cfg: Config, cameras: Iterable[str]) -> None:
        """Config reload: new thresholds and zones apply at once; active events carry on. Trackers of
        removed cameras end their events; new cameras get a tracker."""
        names = list(cameras)
        store = SnapshotStore.from_config(cfg)
        rules = EventRules.from_config(cfg.events)
        for name in list(self.trackers):
            if name not in names:
                self._send(self.trackers.pop(name).close())
        for name in names:
            tracker = self.trackers.get(name)
            if tracker is None:
                self.trackers[name] = EventTracker.from_config(name, cfg, store)
                continue
            zones, masks = zones_from_config(cfg.cameras[name])
            tracker.reconfigure(rules, zones, masks)

    def on_frame(self, dets: Detections, image: np.ndarray | None) -> None:
        tracker = self.trackers.get(dets.camera)
        if tracker is not None:
            self._send(tracker.update(dets, image))

    def tick(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.tick())

    def close(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.close())

    def _send(self, messages: list[EventMessage]) -> None:
        for msg in messages:
            cam = f"{self.base}/{msg.camera}"
            self.publisher.publish(f"{cam}/events", msg.to_json(), qos=1, retain=False, kind="events")
            if msg.snapshot_jpeg is not None:
                self.publisher.publish(f"{cam}/snapshot", msg.snapshot_jpeg, qos=1, retain=True, kind="snapshot")
            # Retained state, re-sent on every reconnect (so a broker that lost it gets it back).
            self.publisher.set_retained(f"{cam}/{msg.label}/active", active_payload(msg))
            if self.metrics is not None:
                self.metrics.events.labels(camera=msg.camera, label=msg.label, type=msg.type).inc()
                self.metrics.events_active.labels(camera=msg.camera, label=msg.label).set(
                    0 if msg.type == "end" else 1)
            log.info("event %s %s: camera %s label %s score %.2f", msg.type, msg.id, msg.camera, msg.label,
                     msg.score)
