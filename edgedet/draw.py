"""Drawing detections on images (annotated outputs, snapshots)."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from edgedet.preprocess import as_bgr
from edgedet.types import Detection

_COLORS = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72)]


def annotate(image: np.ndarray, detections: Iterable[Detection]) -> np.ndarray:
    """A BGR copy of ``image`` with boxes and ``label score`` captions."""
    out = as_bgr(image).copy()
    thickness = max(1, round(min(out.shape[:2]) / 400))
    for det in detections:
        color = _COLORS[det.class_id % len(_COLORS)]
        x1, y1, x2, y2 = (int(round(v)) for v in det.xyxy)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        caption = f"{det.label} {det.score:.2f}"
        cv2.putText(out, caption, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thickness, color, thickness)
    return out
