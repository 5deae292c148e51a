"""The per-frame detections message: pure functions from records to bytes, and its schema."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from edgedet.types import Detections

_LATENCY_STAGES = ("preprocess", "inference", "postprocess", "queue_wait")
_SCHEMA_FILE = "detections.schema.json"


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    value = float(seconds) * 1000.0
    return round(value, 2) if math.isfinite(value) else None


def _iso_utc_ms(t_wall: float) -> str:
    stamp = datetime.fromtimestamp(t_wall, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def to_payload(dets: Detections, published_wall: float, capture_to_publish_ms: float) -> bytes:
    """The JSON message for one frame (compact, UTF-8). Pure: same input, same bytes.

    ``timestamp`` / ``ts`` are the capture time (``dets.t_wall``); latencies are milliseconds
    rounded to 0.01, ``null`` for a stage that is missing from ``dets.timings`` or not finite.
    ``published_wall`` is accepted for API stability but not part of the message: the publish
    time is ``ts + latency_ms.capture_to_publish / 1000``.
    Raises ValueError for values JSON cannot carry (a NaN score, for instance).
    """
    del published_wall  # documented above: derivable from ts + capture_to_publish
    items = []
    for det in dets.items:
        d = det.as_dict()
        d["label"] = str(d["label"])
        d["class_id"] = int(d["class_id"])
        items.append(d)
    latency: dict[str, float | None] = {"capture_to_publish": _ms(capture_to_publish_ms / 1000.0)}
    for stage in _LATENCY_STAGES:
        latency[stage] = _ms(dets.timings.get(stage))
    message: dict[str, Any] = {
        "camera": dets.camera,
        "seq": int(dets.seq),
        "timestamp": _iso_utc_ms(dets.t_wall),
        "ts": round(float(dets.t_wall), 6),
        "width": int(dets.width),
        "height": int(dets.height),
        "model": dets.model,
        "detections": items,
        "latency_ms": latency,
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the detections message; a fresh dict per call."""
    text = resources.files("edgedet.schemas").joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
