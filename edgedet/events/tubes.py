"""Smoke-style confirmation ("tubes"), opt-in per label: judge how a tracked box persists and grows
over time, not single frames (the strongest false-alarm filter in the wildfire field).

A track confirms when, within the last ``window_frames`` frames of its camera, it was matched in at
least ``tube_frames`` of them, and over those matches its box is stable or growing:

- area: the last third's median area is at least ``min_growth`` times the first third's (1.0 =
  stable; a plume grows, a shrinking box does not confirm);
- position: the centre drifted at most ``max_drift`` box sizes (the square root of its area) per matched
  frame on average (a
  bird, a car or a drifting cloud edge moves further);
- it is not a flash: the box area never jumped by more than ``max_jump`` times between matches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from edgedet.tracking import Track


@dataclass(frozen=True, slots=True)
class TubeRules:
    tube_frames: int = 6
    window_frames: int = 10
    min_growth: float = 0.9
    max_drift: float = 0.05
    max_jump: float = 4.0

    def __post_init__(self) -> None:
        if not 2 <= self.tube_frames <= self.window_frames:
            raise ValueError(f"tube rules need 2 <= tube_frames <= window_frames (got {self.tube_frames}, "
                             f"{self.window_frames})")


def tube_verdict(boxes: Sequence[tuple[int, Sequence[float]]], frame: int, rules: TubeRules) -> tuple[bool, str]:
    """(confirmed, reason) for a tracked object's matched boxes ``(frame number, xyxy)`` at ``frame``."""
    recent = [(f, b) for f, b in boxes if f > frame - rules.window_frames]
    if len(recent) < rules.tube_frames:
        return False, f"seen in {len(recent)} of the last {rules.window_frames} frames (need {rules.tube_frames})"
    areas = [max(0.0, (b[2] - b[0]) * (b[3] - b[1])) for _, b in recent]
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for _, b in recent]
    if min(areas) <= 0:
        return False, "empty box"
    jumps = [max(a, b) / min(a, b) for a, b in zip(areas, areas[1:], strict=False)]
    if jumps and max(jumps) > rules.max_jump:
        return False, f"area jumped {max(jumps):.1f}x between frames"
    third = max(1, len(areas) // 3)
    growth = median(areas[-third:]) / median(areas[:third])
    if growth < rules.min_growth:
        return False, f"box shrank to {growth:.2f}x"
    size = math.sqrt(median(areas))
    steps = [math.dist(a, b) for a, b in zip(centres, centres[1:], strict=False)]
    drift = (sum(steps) / len(steps)) / size if steps else 0.0
    if drift > rules.max_drift:
        return False, f"centre drifts {drift:.3f} box sizes per frame (limit {rules.max_drift})"
    return True, f"persists {len(recent)}/{rules.window_frames} frames, grows {growth:.2f}x, drift {drift:.3f}"


def track_verdict(track: Track, frame: int, rules: TubeRules) -> tuple[bool, str]:
    """``tube_verdict`` on a tracker's ``Track``."""
    boxes = [(f, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2))
             for f, (cx, cy), s in zip(track.frames, track.centres, (math.sqrt(a) for a in track.areas), strict=True)]
    return tube_verdict(boxes, frame, rules)
