"""Objects, not labels: a ByteTrack-style tracker per camera.

Each frame's detections are matched to the camera's live tracks by IoU against the track's
predicted box (a constant-velocity motion model on the box centre and size, smoothed):

1. detections scoring >= ``high`` are matched first;
2. the tracks still unmatched then take detections scoring between ``low`` and ``high``, so a
   briefly weak detection keeps its track instead of starting a new one;
3. unmatched high detections start new tracks; a track unmatched for ``max_age_frames`` frames or
   ``max_age_s`` seconds is lost.

Matching is class-agnostic within a label group (default: all labels in one group), so a person
the model calls ``Normal`` in one frame and ``Fall`` in the next stays one track. A track's label
is the score-weighted vote over its history. Matching is greedy by IoU (highest first), which
equals the optimal assignment for the few, well-separated boxes of a camera and costs O(n·m)
with numpy; no scipy needed on a Pi.

``track_id`` is ``<camera>-<tracker start epoch>-<n>``: stable for the object's life, unique per
camera across restarts.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgedet.boxes import greedy_match, iou_matrix
from edgedet.config import CameraConfig, TrackingConfig
from edgedet.types import Detection, Detections

SMOOTHING = 0.6  # weight of the new measurement in the velocity estimate
HISTORY = 256  # matched frames kept per track (areas, centres, frame numbers)


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    high: float = 0.5  # detections at or above start and first-match tracks
    low: float = 0.1  # detections between low and high only keep existing tracks alive
    match_iou: float = 0.3  # minimum IoU between a predicted box and a detection
    max_age_frames: int = 10
    max_age_s: float = 3.0
    groups: tuple[tuple[str, ...], ...] = ()  # labels matched together; () = every label in one group

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1 (got low {self.low}, high {self.high})")
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1] (got {self.match_iou})")
        if self.max_age_frames < 1 or self.max_age_s <= 0:
            raise ValueError(f"max_age needs >= 1 frame and > 0 s (got {self.max_age_frames}, {self.max_age_s})")


@dataclass(slots=True)
class Track:
    """One tracked object. ``xyxy`` is the last matched box; ``labels`` the score sum per label."""

    track_id: str
    xyxy: np.ndarray
    velocity: np.ndarray  # per frame, of (cx, cy, w, h)
    first_seen: float
    last_seen: float
    hits: int = 1
    missed: int = 0
    best_score: float = 0.0
    best_xyxy: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    labels: dict[str, float] = field(default_factory=dict)  # score sum per label
    counts: Counter[str] = field(default_factory=Counter)
    areas: list[float] = field(default_factory=list)  # box area per matched frame (tube rules)
    centres: list[tuple[float, float]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # the tracker's frame number of each match

    @property
    def label(self) -> str:
        """The score-weighted vote over the track's history (ties: the label seen first)."""
        return max(self.labels, key=lambda k: self.labels[k])

    def predicted(self) -> np.ndarray:
        cx, cy, w, h = _cxcywh(self.xyxy) + self.velocity * (self.missed + 1)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass(frozen=True, slots=True)
class TrackedFrame:
    """A frame's detections with their track id (None: below ``low``, or unmatched and below ``high``)."""

    items: tuple[tuple[Detection, str | None], ...]
    lost: tuple[Track, ...]  # tracks that ended with this frame

    def track_ids(self) -> list[str | None]:
        return [tid for _, tid in self.items]


def _cxcywh(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]])


class Tracker:
    """The tracks of one camera. Not thread-safe: one camera's frames arrive in order (events stage)."""

    def __init__(self, camera: str, settings: TrackerSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.camera = camera
        self._prefix = f"{camera}-{int(clock())}"
        self._next = 1
        self.frame = 0  # frames seen by this tracker
        self.tracks: list[Track] = []
        self.settings = settings or TrackerSettings()

    @property
    def settings(self) -> TrackerSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: TrackerSettings) -> None:
        self._settings = settings
        self._group_of = self._groups(settings.groups)

    @staticmethod
    def _groups(groups: Sequence[Sequence[str]]) -> Mapping[str, int]:
        return {label: i for i, group in enumerate(groups) for label in group}

    def group(self, label: str) -> int:
        """Labels listed together share a group; every unlisted label shares group -1."""
        return self._group_of.get(label, -1)

    def update(self, detections: Iterable[Detection], now: float) -> TrackedFrame:
        dets = list(detections)
        s = self.settings
        self.frame += 1
        ids: list[str | None] = [None] * len(dets)
        matched_tracks: set[int] = set()
        for stage_low, stage_high in ((s.high, 1.01), (s.low, s.high)):
            cand = [i for i, d in enumerate(dets) if ids[i] is None and stage_low <= d.score < stage_high]
            free = [t for t in range(len(self.tracks)) if t not in matched_tracks]
            for group in {self.group(dets[i].label) for i in cand}:
                rows = [t for t in free if self.group(self.tracks[t].label) == group]
                cols = [i for i in cand if self.group(dets[i].label) == group]
                if not rows or not cols:
                    continue
                predicted = np.array([self.tracks[t].predicted() for t in rows])
                boxes = np.array([dets[i].xyxy for i in cols], dtype=float)
                for r, c in greedy_match(iou_matrix(predicted, boxes), s.match_iou):
                    t, i = rows[r], cols[c]
                    self._hit(self.tracks[t], dets[i], now)
                    matched_tracks.add(t)
                    ids[i] = self.tracks[t].track_id
        for i, det in enumerate(dets):
            if ids[i] is None and det.score >= s.high:
                track = self._start(det, now)
                matched_tracks.add(len(self.tracks) - 1)
                ids[i] = track.track_id
        lost = []
        kept = []
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.missed += 1
                if track.missed >= s.max_age_frames or now - track.last_seen >= s.max_age_s:
                    lost.append(track)
                    continue
            kept.append(track)
        self.tracks = kept
        return TrackedFrame(tuple(zip(dets, ids, strict=True)), tuple(lost))

    def expire(self, now: float) -> list[Track]:
        """Tracks lost by time alone (frames stopped coming)."""
        lost = [t for t in self.tracks if now - t.last_seen >= self.settings.max_age_s]
        self.tracks = [t for t in self.tracks if t not in lost]
        return lost

    def _start(self, det: Detection, now: float) -> Track:
        track = Track(f"{self._prefix}-{self._next}", np.array(det.xyxy, dtype=float), np.zeros(4), now, now)
        self._next += 1
        self._record(track, det, self.frame)
        self.tracks.append(track)
        return track

    def _hit(self, track: Track, det: Detection, now: float) -> None:
        box = np.array(det.xyxy, dtype=float)
        step = (_cxcywh(box) - _cxcywh(track.xyxy)) / (track.missed + 1)
        track.velocity = SMOOTHING * step + (1 - SMOOTHING) * track.velocity
        track.xyxy = box
        track.missed = 0
        track.hits += 1
        track.last_seen = now
        self._record(track, det, self.frame)

    @staticmethod
    def _record(track: Track, det: Detection, frame: int) -> None:
        track.labels[det.label] = track.labels.get(det.label, 0.0) + det.score
        track.counts[det.label] += 1
        if det.score > track.best_score:
            track.best_score = det.score
            track.best_xyxy = tuple(float(v) for v in det.xyxy)  # type: ignore[assignment]
        x1, y1, x2, y2 = det.xyxy
        track.areas.append(max(0.0, (x2 - x1) * (y2 - y1)))
        track.centres.append(((x1 + x2) / 2, (y1 + y2) / 2))
        track.frames.append(frame)
        if len(track.areas) > HISTORY:  # bounded history (tube rules look at a window)
            del track.areas[:-HISTORY], track.centres[:-HISTORY], track.frames[:-HISTORY]


class TrackingStage:
    """One tracker per camera, fed from the inference workers (a lock per camera: two workers may
    finish frames of one camera at the same time). ``assign`` returns the frame's Detections with
    ``track_id`` set; frames are tracked in arrival order, on the capture (monotonic) clock."""

    def __init__(self, settings: TrackingConfig, cameras: Mapping[str, CameraConfig], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._trackers: dict[str, tuple[Tracker, threading.Lock]] = {}
        self.settings = settings
        self.reconfigure(settings, cameras)

    @staticmethod
    def tracker_settings(settings: TrackingConfig, camera: CameraConfig) -> TrackerSettings:
        return TrackerSettings(high=settings.high, low=settings.low, match_iou=settings.match_iou,
                               max_age_frames=camera.tracking.max_age_frames, max_age_s=camera.tracking.max_age_s,
                               groups=tuple(tuple(g) for g in settings.groups))

    def reconfigure(self, settings: TrackingConfig, cameras: Mapping[str, CameraConfig]) -> None:
        """New settings apply to the running tracks; removed cameras lose theirs, new ones get a tracker."""
        self.settings = settings
        trackers = {}
        for name, cam in cameras.items():
            wanted = self.tracker_settings(settings, cam)
            entry = self._trackers.get(name)
            if entry is None:
                entry = (Tracker(name, wanted, clock=self._clock), threading.Lock())
            else:
                entry[0].settings = wanted
            trackers[name] = entry
        self._trackers = trackers

    def assign(self, dets: Detections) -> Detections:
        entry = self._trackers.get(dets.camera)
        if dets.tracked or not self.settings.enabled or entry is None:
            return dets
        tracker, lock = entry
        with lock:
            frame = tracker.update(dets.items, now=dets.t_mono_ns / 1e9)
        items = tuple(det if tid is None else dataclasses.replace(det, track_id=tid) for det, tid in frame.items)
        return dataclasses.replace(dets, items=items, tracked=True)

    def forget(self, camera: str) -> None:
        self._trackers.pop(camera, None)
