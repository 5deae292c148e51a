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

import logging
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgedet.config import CameraConfig, EventsConfig, EventThresholds
from edgedet.events.messages import EventMessage, EventType
from edgedet.events.snapshots import SnapshotStore
from edgedet.events.tubes import TubeRules, tube_verdict
from edgedet.events.zones import Zone, box_iou, zones_from_config
from edgedet.outputs.payload import iso_utc_ms
from edgedet.types import Detection, Detections

__all__ = ["EventRules", "EventTracker", "default_event_id"]

log = logging.getLogger(__name__)

IdFactory = Callable[[float, str, str], str]

UPDATE_SCORE_STEP = 0.05  # publish an update when the top score rose this much
UPDATE_MIN_IOU = 0.5  # ... or the box overlaps the last published one less than this
_EPS = 1e-9
_ID_RE = re.compile(r"[A-Za-z0-9._-]+")


def default_event_id(start_wall: float, camera: str, label: str) -> str:
    """``<start epoch seconds>-<6 random hex digits>``, e.g. ``1714564800.123456-3fa9c1``."""
    del camera, label  # unique enough without them, and always safe as a file name
    return f"{start_wall:.6f}-{secrets.token_hex(3)}"


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


# --------------------------------------------------------------------------- tracker state


@dataclass(slots=True)
class _Hit:
    """The best qualifying detection of one frame (of one label, or of one tracked object)."""

    seq: int
    det: Detection
    zones: tuple[str, ...]
    t_wall: float
    frame: int = 0  # the tracker's frame counter (tube rules look at a window of frames)


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
    track_id: str | None
    counts: Counter[str]  # the object's qualifying frames per model label (shared with its state)
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
    """One label's (or, with tracking, one tracked object's) K-of-N window (``None`` = a frame
    without a qualifying detection), and the score-weighted label vote of its hits."""

    window: deque[_Hit | None]
    best: _Best | None = None  # before the event: the best hit that is still in the window
    event: _Event | None = None
    track_id: str | None = None
    votes: dict[str, float] = field(default_factory=dict)  # score sum per label
    counts: Counter[str] = field(default_factory=Counter)

    def hits(self) -> list[_Hit]:
        return [h for h in self.window if h is not None]

    def vote(self, fallback: str) -> str:
        return max(self.votes, key=lambda k: self.votes[k]) if self.votes else fallback


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
        tracked: bool = False,
    ) -> None:
        """``tracked``: detections carry a ``track_id`` (edgedet/tracking.py) and events are per object;
        detections without one (below the tracking threshold) are ignored. Else events are per label."""
        self.camera = camera
        self.tracked = tracked
        self._frame = 0
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
    def from_config(cls, name: str, camera: CameraConfig, events: EventsConfig,
                    snapshots: SnapshotStore | None = None, clock: Callable[[], float] = time.time) -> EventTracker:
        """The tracker of camera ``name``: zones and masks from ``camera``, thresholds from ``events``."""
        zones, masks = zones_from_config(camera)
        return cls(name, EventRules.from_config(events), zones, masks, clock, snapshots=snapshots,
                   tracked=events.tracking.enabled)

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
            self._frame += 1
            out = self._expire(now)
            hits = self._qualifying(dets)
            def order(key: str) -> tuple[str, str]:  # by label, then key: stable message order
                state, hit = self._labels.get(key), hits.get(key)
                if state is not None:
                    return state.event.label if state.event else state.vote(key), key
                return (hit.det.label if hit is not None else key), key

            for key in sorted(set(self._labels) | set(hits), key=order):
                state = self._labels.get(key)
                hit = hits.get(key)
                if state is None:
                    assert hit is not None
                    rules = self.rules.for_label(hit.det.label)
                    state = self._labels[key] = _Label(deque(maxlen=rules.window_frames), track_id=hit.det.track_id)
                if hit is not None:
                    state.votes[hit.det.label] = state.votes.get(hit.det.label, 0.0) + hit.det.score
                    state.counts[hit.det.label] += 1
                label = state.event.label if state.event is not None else state.vote(key)
                rules = self.rules.for_label(label)
                if state.event is None and gap is not None and gap > rules.clear_after_s:
                    state.window.clear()  # the stream paused: old hits do not count towards a new event
                    state.best = None
                msg = self._step(label, state, rules, hit, image, now)
                if msg is not None:
                    out.append(msg)
                if state.event is None and not state.hits():
                    del self._labels[key]
            return out

    def reconfigure(self, rules: EventRules, zones: Iterable[Zone], masks: Iterable[Zone],
                    *, snapshots: SnapshotStore | None) -> None:
        """New thresholds, zones and snapshot store (config reload; None: no snapshots); active events
        carry on under the new rules."""
        with self._lock:
            self.rules, self.zones, self.masks = rules, tuple(zones), tuple(masks)
            self._snapshots = snapshots

    def end_labels(self, labels: Iterable[str]) -> list[EventMessage]:
        """End the active events of ``labels`` now (a profile no longer reports them); others carry on."""
        with self._lock:
            out = []
            for label in labels:
                state = self._labels.pop(label, None)
                if state is not None and state.event is not None:
                    out.append(self._end(state))
            return out

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
        """Per key (the label, or the track id with tracking), the best qualifying detection of this
        frame and the zones it (or others of that key) touched. A tracked object's thresholds are
        those of its voted label."""
        best: dict[str, Detection] = {}
        zones: dict[str, dict[str, None]] = {}
        frame_area = float(dets.width) * float(dets.height)
        for det in dets.items:
            if self.tracked and det.track_id is None:
                continue
            key = det.track_id if self.tracked and det.track_id is not None else det.label
            state = self._labels.get(key)
            label = det.label if state is None else (state.event.label if state.event else state.vote(det.label))
            rules = self.rules.for_label(label)
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
            zones.setdefault(key, {}).update(dict.fromkeys(inside))
            if key not in best or det.score > best[key].score:
                best[key] = det
        return {key: _Hit(dets.seq, det, tuple(zones[key]), dets.t_wall, self._frame) for key, det in best.items()}

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
            if rules.confirm == "tube" and not self._tube(hits, rules):
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

    def _tube(self, hits: list[_Hit], rules: EventThresholds) -> bool:
        """Smoke-style confirmation: the hits persist and their box is stable or growing."""
        tube = TubeRules(tube_frames=max(2, rules.confirm_frames), window_frames=max(2, rules.window_frames),
                         min_growth=rules.tube_min_growth, max_drift=rules.tube_max_drift)
        boxes = [(h.frame, h.det.xyxy) for h in hits]
        ok, reason = tube_verdict(boxes, self._frame, tube)
        if not ok:
            log.debug("camera %s: %s not confirmed as a tube: %s", self.camera, hits[-1].det.label, reason)
        return ok

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
            id=event_id, label=label, track_id=state.track_id, counts=state.counts, start_wall=start_wall,
            last_hit_at=now, last_seen_wall=hit.t_wall,
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
            if now - event.last_hit_at >= self.rules.for_label(event.label).clear_after_s - _EPS:
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
            start_time=iso_utc_ms(event.start_wall),
            end_time=iso_utc_ms(event.last_seen_wall) if kind == "end" else None,
            score=float(event.current.score),
            top_score=float(event.best.det.score),
            box=(x1, y1, x2, y2),
            zones=tuple(event.zones),
            frames_seen=event.frames_seen,
            snapshot=event.snapshot,
            snapshot_jpeg=jpeg,
            track_id=event.track_id,
            labels=dict(event.counts),
            start_wall=event.start_wall,
        )
