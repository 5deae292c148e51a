"""Motion-aware inference with a smoke-safe floor (``detect.mode: motion``).

A cheap motion measure runs on every decoded frame of a camera: the frame downscaled to a small
grey image (``HEIGHT`` px high, INTER_AREA), blurred, compared with a running-average background;
pixels that differ by more than ``threshold`` grey levels form contours, and the motion fraction is
the area of the contours larger than ``min_blob`` of the image. A frame is sent to inference

- while there is motion (fraction >= ``min_fraction``), at most every ``min_interval_s``;
- and at least every ``max_interval_s`` without motion: the floor, so a slow plume that the
  running average absorbs is still seen;
- more often while an event of the camera is in progress (``hold_interval_s``, set by the profile
  runner), so an object that stops moving is not ended for want of inferences;
- sooner when a long-horizon reference (a frame kept for ``reference_s``, minutes) differs from now
  by more than ``slow_fraction``: growth too slow for frame-to-frame motion (labels configured as
  slow: smoke, fire, tube-confirmed labels).

``MotionGate.decide`` is pure bookkeeping on the caller's thread (the camera's capture thread);
it costs well under 1 ms per 1280x720 frame (measured in ``edgedet bench``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from edgedet.config import CameraConfig, EventsConfig

HEIGHT = 90  # px; Frigate uses 100-px-high frames for its motion detector
_KERNEL = np.ones((3, 3), np.uint8)


@dataclass(frozen=True, slots=True)
class MotionSettings:
    min_interval_s: float = 0.0  # fastest inference rate while there is motion (0: every frame)
    max_interval_s: float = 10.0  # the floor: at least one inference this often
    threshold: int = 25  # grey levels
    min_fraction: float = 0.002  # of the image area, to count as motion
    min_blob: float = 0.0005  # contours smaller than this share of the image are noise
    alpha: float = 0.05  # running-average weight of each new frame
    settle_alpha: float = 0.3  # the weight where the frame matches the previous one (still pixels)
    reference_s: float = 120.0  # the long-horizon reference is replaced this often
    slow_fraction: float = 0.003  # change against the reference that raises the rate (of the image area)
    slow: bool = True  # compare against the long-horizon reference (slow labels configured)

    def __post_init__(self) -> None:
        if self.max_interval_s <= 0 or self.min_interval_s < 0 or self.min_interval_s > self.max_interval_s:
            raise ValueError(f"need 0 <= min_interval_s <= max_interval_s, max > 0 (got {self.min_interval_s}, "
                             f"{self.max_interval_s})")


@dataclass(frozen=True, slots=True)
class Decision:
    infer: bool
    reason: str  # inferred: motion | slow_change | floor | event | first; skipped: no_motion | min_interval
    motion: float  # fraction of the image that moved
    slow_change: float  # fraction that differs from the long-horizon reference
    since_s: float = 0.0  # time since the previous inference (at this frame)


def small_grey(image: np.ndarray, height: int = HEIGHT) -> np.ndarray:
    """The frame as a small blurred grey image. Resize first (the colour conversion then costs
    nothing): bilinear to 4x the target (0.03 ms at 1280x720), then INTER_AREA, which averages
    sensor noise away; INTER_AREA straight from full size costs 0.7 ms."""
    h, w = image.shape[:2]
    size = (max(1, round(w * height / h)), height)
    if h > 4 * height:
        image = cv2.resize(image, (size[0] * 4, height * 4), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY if small.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    return cv2.GaussianBlur(small, (5, 5), 0)


def changed_fraction(a: np.ndarray, b: np.ndarray, threshold: int, min_blob: float) -> float:
    """Share of the image covered by contours of pixels that differ by more than ``threshold``."""
    diff = cv2.absdiff(a, b)
    _, mask = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)
    mask = cv2.dilate(mask, _KERNEL, iterations=1)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    total = float(mask.shape[0] * mask.shape[1])
    area = sum(a for a in (cv2.contourArea(c) for c in contours) if a >= min_blob * total)
    return area / total


class MotionGate:
    """One camera's motion measure and inference schedule (not thread-safe: one capture thread)."""

    def __init__(self, settings: MotionSettings) -> None:
        self.settings = settings
        self._background: np.ndarray | None = None  # float32 running average
        self._reference: np.ndarray | None = None
        self._reference_at = 0.0
        self._previous: np.ndarray | None = None
        self._last_infer: float | None = None
        # Set by another thread (edgedet/profile_runner.py) while an event of this camera is in progress:
        # the floor tightens to this interval, so an object that stops moving keeps its event alive.
        self.hold_interval_s: float | None = None

    def decide(self, image: np.ndarray, now: float) -> Decision:
        s = self.settings
        grey = small_grey(image)
        if self._background is None or self._background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            self._reference, self._reference_at = grey, now
            self._last_infer = now
            return Decision(True, "first", 0.0, 0.0)
        motion = changed_fraction(grey, cv2.convertScaleAbs(self._background), s.threshold, s.min_blob)
        cv2.accumulateWeighted(grey, self._background, s.alpha)
        if self._previous is not None and s.settle_alpha > s.alpha:
            # Pixels that match the previous frame are still: let the background catch up with them fast, so
            # an object that left leaves no ghost of motion behind (the running average alone takes seconds).
            still = (cv2.absdiff(grey, self._previous) <= s.threshold // 2).astype(np.uint8)
            cv2.accumulateWeighted(grey, self._background, s.settle_alpha, mask=still)
        self._previous = grey
        slow = 0.0
        if s.slow and self._reference is not None:
            slow = changed_fraction(grey, self._reference, s.threshold, s.min_blob)
            if now - self._reference_at >= s.reference_s and motion < s.min_fraction:
                self._reference, self._reference_at = grey, now  # never a frame with something moving in it
        since = now - (self._last_infer if self._last_infer is not None else -1e9)
        hold = self.hold_interval_s
        if since >= s.max_interval_s:
            reason = "floor"
        elif hold is not None and since >= max(hold, s.min_interval_s):
            reason = "event"
        elif motion >= s.min_fraction:
            reason = "motion" if since >= s.min_interval_s else "min_interval"
        elif slow >= s.slow_fraction:
            reason = "slow_change" if since >= s.min_interval_s else "min_interval"
        else:
            reason = "no_motion"
        infer = reason in {"floor", "motion", "slow_change", "event"}
        if infer:
            self._last_infer = now
        return Decision(infer, reason, motion, slow, since)


def motion_settings(cam: CameraConfig, tube_labels: Iterable[str] = ()) -> MotionSettings | None:
    """The gate settings of a camera's ``detect`` block (None for ``mode: always``). The long-horizon
    reference is on unless the camera's ``labels`` are set and hold no slow label (``detect.slow_labels``
    and ``tube_labels``: labels whose events use ``confirm: tube``)."""
    d = cam.detect
    if d.mode != "motion":
        return None
    slow_set = set(d.slow_labels) | set(tube_labels)
    slow = cam.labels is None or "*" in slow_set or bool(set(cam.labels) & slow_set)
    return MotionSettings(min_interval_s=d.min_interval_s, max_interval_s=d.max_interval_s, threshold=d.threshold,
                          min_fraction=d.min_fraction, reference_s=d.reference_s, slow_fraction=d.slow_fraction,
                          slow=slow)


def tube_labels(events: EventsConfig) -> frozenset[str]:
    """Labels whose events are confirmed as tubes (``confirm: tube``); ``*`` when the default is tube."""
    out = {label for label in events.labels if events.thresholds(label).confirm == "tube"}
    if events.default.confirm == "tube":
        out.add("*")
    return frozenset(out)
