"""Records that flow one way through the pipeline. No cv2 / torch imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded image from a camera.

    ``seq`` rises by one per successful read, so a gap downstream is a dropped frame.
    ``t_mono_ns`` (time.monotonic_ns) is for latency; ``t_wall`` (epoch seconds) only for payloads.
    """

    camera: str
    seq: int
    t_mono_ns: int
    t_wall: float
    image: np.ndarray

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError(f"Frame.seq must be >= 0 (got {self.seq})")
        if not isinstance(self.image, np.ndarray):
            raise TypeError(f"Frame.image must be a numpy array (got {type(self.image).__name__})")


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object; ``xyxy`` in source-image pixels; ``track_id`` once the tracker matched it
    (``edgedet/tracking.py``; None below the tracking threshold or with tracking off)."""

    label: str
    class_id: int
    score: float
    xyxy: tuple[float, float, float, float]
    track_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.xyxy) != 4:
            raise ValueError(f"Detection.xyxy must have 4 values (got {len(self.xyxy)})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.xyxy],
        }


@dataclass(frozen=True, slots=True)
class Detections:
    """The result for one frame: identity and timings, not pixels.

    ``timings`` holds seconds per stage: ``queue_wait``, ``preprocess``, ``inference``,
    ``postprocess``.
    """

    camera: str
    seq: int
    t_mono_ns: int
    t_wall: float
    width: int
    height: int
    model: str
    items: tuple[Detection, ...]
    timings: dict[str, float] = field(default_factory=dict)
    tracked: bool = False  # the tracker has set the items' track_id (edgedet/tracking.py)
