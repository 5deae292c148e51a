"""The event lifecycle message: ``new`` / ``update`` / ``end`` of one event, as published.

Its JSON form (:meth:`EventMessage.to_json`) goes to ``<prefix>/<node>/<camera>/events``; its
JSON Schema is ``edgedet.schemas.load_schema("event")``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EventMessage", "EventType", "active_payload"]

EventType = Literal["new", "update", "end"]


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
    track_id: str | None = None  # the tracked object (None with tracking off)
    labels: dict[str, int] = field(default_factory=dict)  # the object's label history: frames per label
    clip: str | None = None  # path of the event's clip on the node (written after the end)
    start_wall: float = field(default=0.0, compare=False)  # start_time as epoch seconds (not published)

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
            "track_id": self.track_id,
            "labels": dict(self.labels),
            "clip": self.clip,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def active_payload(msg: EventMessage) -> Literal["ON", "OFF"]:
    """The retained ``<camera>/<label>/active`` value after ``msg``."""
    return "OFF" if msg.type == "end" else "ON"
