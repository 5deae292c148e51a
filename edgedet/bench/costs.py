"""Per-frame costs of the cheap stages, measured in the bench's own process (no torch): the tracker
at 1, 10 and 100 detections per frame, and the motion measure on a 1280x720 frame."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from edgedet.motion import MotionGate, MotionSettings
from edgedet.tracking import Tracker
from edgedet.types import Detection

FRAMES = 300
WARMUP = 30


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples[WARMUP:]) * 1000, 4)


def tracker_cost(n: int, frames: int = FRAMES, seed: int = 0) -> float:
    """Median ms per ``Tracker.update`` with ``n`` objects drifting across a 1280x720 frame."""
    rng = np.random.default_rng(seed)
    starts = rng.uniform(0, 1200, size=(n, 2))
    tracker = Tracker("bench")
    times = []
    for f in range(frames):
        dets = [Detection("person", 0, 0.9, (x + f, y, x + f + 40, y + 80)) for x, y in starts]
        t0 = time.perf_counter()
        tracker.update(dets, now=f * 0.04)
        times.append(time.perf_counter() - t0)
    return _median_ms(times)


def motion_cost(frames: int = FRAMES, seed: int = 0) -> float:
    """Median ms per ``MotionGate.decide`` on 1280x720 frames with a moving blob."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    gate = MotionGate(MotionSettings())
    times = []
    for f in range(frames):
        image = base.copy()
        image[300:400, (f * 4) % 1200:(f * 4) % 1200 + 80] = 255
        t0 = time.perf_counter()
        gate.decide(image, f * 0.04)
        times.append(time.perf_counter() - t0)
    return _median_ms(times)


def measure_costs() -> dict[str, Any]:
    return {
        "tracker_ms": {str(n): tracker_cost(n) for n in (1, 10, 100)},
        "motion_ms_1280x720": motion_cost(),
        "targets": {"tracker_10_ms": 1.0, "motion_ms": 1.0},
    }


def format_costs(costs: dict[str, Any]) -> list[str]:
    t = costs["tracker_ms"]
    return [
        f"per-frame costs (this process, median of {FRAMES - WARMUP} frames)",
        f"   tracker: {t['1']:.3f} ms at 1 detection, {t['10']:.3f} ms at 10 (target < 1 ms), {t['100']:.3f} ms at 100",
        f"   motion measure, 1280x720: {costs['motion_ms_1280x720']:.3f} ms (target < 1 ms)",
    ]
