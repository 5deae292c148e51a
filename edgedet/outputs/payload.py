"""The per-frame detections message: pure functions from records to bytes.

Its JSON Schema is ``edgedet.schemas.load_schema("detections")``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from edgedet.types import Detections

_LATENCY_STAGES = ("preprocess", "inference", "postprocess", "queue_wait")


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    value = float(seconds) * 1000.0
    return round(value, 2) if math.isfinite(value) else None


def iso_utc_ms(t_wall: float) -> str:
    """Wall-clock epoch seconds as ISO 8601 UTC with milliseconds: ``2023-11-14T22:13:20.123Z``."""
    stamp = datetime.fromtimestamp(t_wall, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def to_payload(dets: Detections, capture_to_publish_ms: float) -> bytes:
    """The JSON message for one frame (compact, UTF-8). Pure: same input, same bytes.

    ``timestamp`` / ``ts`` are the capture time (``dets.t_wall``); latencies are milliseconds
    rounded to 0.01, ``null`` for a stage that is missing from ``dets.timings`` or not finite.
    The publish time is not a field of its own: it is ``ts + latency_ms.capture_to_publish / 1000``.
    Raises ValueError for values JSON cannot carry (a NaN score, for instance).
    """
    items = []
    for det in dets.items:
        d = det.as_dict()
        d["track_id"] = det.track_id
        d["label"] = str(d["label"])
        d["class_id"] = int(d["class_id"])
        items.append(d)
    latency: dict[str, float | None] = {"capture_to_publish": _ms(capture_to_publish_ms / 1000.0)}
    for stage in _LATENCY_STAGES:
        latency[stage] = _ms(dets.timings.get(stage))
    message: dict[str, Any] = {
        "camera": dets.camera,
        "seq": int(dets.seq),
        "timestamp": iso_utc_ms(dets.t_wall),
        "ts": round(float(dets.t_wall), 6),
        "width": int(dets.width),
        "height": int(dets.height),
        "model": dets.model,
        "detections": items,
        "latency_ms": latency,
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()



def fit_jpeg(data: bytes, max_bytes: int) -> bytes | None:
    """A JPEG re-encoded to at most ``max_bytes``: lower quality first (75, 60, 45), then halving
    the area each step down to 160 px wide. None when it cannot be decoded or never fits."""
    import cv2  # lazy: payload.py stays importable (and cheap) without OpenCV loaded
    import numpy as np

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    while True:
        for quality in (75, 60, 45):
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and buf.size <= max_bytes:
                return buf.tobytes()
        height, width = image.shape[:2]
        if width <= 160:
            return None
        image = cv2.resize(image, (max(1, int(width * 0.7)), max(1, int(height * 0.7))),
                           interpolation=cv2.INTER_AREA)
