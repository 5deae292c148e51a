"""Event messages into the history, and verdicts out: MQTT + an on-box YOLO dataset.

``RecordingPublisher`` wraps the publisher the event stage is given (the stage's
``EventPublisher`` protocol): every ``events`` message is also queued for the history, and, with
``web.feedback.export_dataset``, the raw frame of each new best detection is kept for the dataset.
``Feedback.submit`` stores a verdict, publishes it on ``<prefix>/<node>/<camera>/events``
(``"type": "feedback"``) and writes the dataset sample.

Dataset layout (``<state_dir>/dataset``), ready for ``yolo train data=<state_dir>/dataset/data.yaml``::

    images/<event id>.jpg   the event's best frame, unannotated
    labels/<event id>.txt   one ``class cx cy w h`` line (normalised) per box of the event's label;
                            empty for a false alarm (a negative sample)
    data.yaml               path, train/val (images), names (the model's classes)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from edgedet.outputs.topics import Topics
from edgedet.types import Detections
from edgedet.web.history import EventHistory
from edgedet.web.live import LiveFrames

__all__ = ["CATEGORIES", "VERDICTS", "Feedback", "RecordingPublisher"]

log = logging.getLogger("edgedet.web")

VERDICTS = ("true_alarm", "false_alarm")
CATEGORIES = ("cloud", "fog", "glare", "dust", "industrial_smoke", "other")
Verdict = Literal["true_alarm", "false_alarm"]
RAW_QUALITY = 95


class Publisher(Protocol):
    """What this module needs from ``edgedet.outputs.client.MqttPublisher``."""

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool: ...

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


class RecordingPublisher:
    """A publisher that also records every ``events`` message in the history (the stage's protocol)."""

    def __init__(self, inner: Publisher, history: EventHistory, live: LiveFrames, frames_dir: Path | None) -> None:
        self.inner = inner
        self.history = history
        self.live = live
        self.frames_dir = frames_dir  # None: raw frames are not kept (export_dataset is off)
        self._snapshots: dict[str, str | None] = {}  # event id -> latest snapshot path seen

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        if kind == "events":
            self._record(payload)
        return self.inner.publish(topic, payload, qos=qos, retain=retain, kind=kind)

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        self.inner.set_retained(topic, payload)

    def _record(self, payload: bytes | str) -> None:
        try:
            msg: dict[str, Any] = json.loads(payload)
        except ValueError:
            return
        event_id = msg.get("id")
        if not isinstance(event_id, str) or msg.get("type") not in ("new", "update", "end"):
            return
        frame: Callable[[], str | None] | None = None
        best = msg["type"] == "new" or msg.get("snapshot") != self._snapshots.get(event_id)
        if self.frames_dir is not None and best and msg["type"] != "end":
            current = self.live.image(msg["camera"])  # the frame the stage just processed
            if current is not None:
                dets, image = current
                frame = _frame_writer(self.frames_dir, event_id, msg["label"], dets, image)
        if msg["type"] == "end":
            self._snapshots.pop(event_id, None)
        else:
            self._snapshots[event_id] = msg.get("snapshot")
        self.history.submit(msg, frame)


def _frame_writer(folder: Path, event_id: str, label: str, dets: Detections,
                  image: np.ndarray) -> Callable[[], str | None]:
    """Store the raw frame + its boxes of ``label`` (run later by the history's writer thread)."""
    boxes = [{"class_id": d.class_id, "xyxy": list(d.xyxy)} for d in dets.items if d.label == label]

    def write() -> str | None:
        path = folder / f"{event_id}.jpg"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, RAW_QUALITY])
            if not ok:
                return None
            _atomic_write(path, bytes(buf.tobytes()))
            meta = {"width": dets.width, "height": dets.height, "boxes": boxes}
            _atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())
        except OSError as exc:
            log.warning("web: cannot keep the frame of event %s: %s", event_id, exc.strerror or exc)
            return None
        return str(path)

    return write


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Feedback:
    """Verdicts: stored with the event, published on MQTT, optionally exported as a YOLO sample."""

    def __init__(self, history: EventHistory, publisher: Publisher, topics: Topics,
                 dataset_dir: Path | None, names: Callable[[], Sequence[str]]) -> None:
        self.history = history
        self.publisher = publisher
        self.topics = topics
        self.dataset_dir = dataset_dir  # None: export_dataset is off
        self.names = names  # the model's class names (the model may be reloaded)

    def submit(self, event_id: str, verdict: Verdict, category: str | None, note: str) -> dict[str, Any] | None:
        """The updated event (with ``dataset``: the sample's image path or None), or None if unknown."""
        now = time.time()
        event = self.history.set_feedback(event_id, verdict, category, note, now)
        if event is None:
            return None
        fb = event["feedback"]
        payload = {"type": "feedback", "id": event_id, "camera": event["camera"], "label": event["label"],
                   "verdict": verdict, "category": category, "note": note, "time": fb["time"]}
        self.publisher.publish(self.topics.events(event["camera"]),
                               json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(),
                               qos=1, retain=False, kind="events")
        log.info("feedback on event %s (camera %s): %s%s", event_id, event["camera"], verdict,
                 f" ({category})" if category else "")
        event["dataset"] = self._export(event_id, verdict) if self.dataset_dir is not None else None
        return event

    def _export(self, event_id: str, verdict: Verdict) -> str | None:
        assert self.dataset_dir is not None
        frame = self.history.frame_path(event_id)
        if frame is None or not Path(frame).is_file():
            log.warning("web: no stored frame for event %s; not added to the dataset", event_id)
            return None
        try:
            meta = json.loads(Path(frame).with_suffix(".json").read_text())
            images, labels = self.dataset_dir / "images", self.dataset_dir / "labels"
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            image = images / f"{event_id}.jpg"
            shutil.copyfile(frame, image)
            lines = [] if verdict == "false_alarm" else [_yolo_line(b, meta["width"], meta["height"])
                                                         for b in meta["boxes"]]
            _atomic_write(labels / f"{event_id}.txt", "".join(f"{line}\n" for line in lines).encode())
            self._data_yaml()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("web: cannot add event %s to the dataset: %s", event_id, exc)
            return None
        return str(image)

    def _data_yaml(self) -> None:
        assert self.dataset_dir is not None
        names = "\n".join(f"  {i}: {json.dumps(name)}" for i, name in enumerate(self.names()))
        text = (f"# written by edgedet: one sample per verdict (false alarms have empty label files)\n"
                f"path: {json.dumps(str(self.dataset_dir))}\ntrain: images\nval: images\nnames:\n{names}\n")
        _atomic_write(self.dataset_dir / "data.yaml", text.encode())


def _yolo_line(box: dict[str, Any], width: int, height: int) -> str:
    x1, y1, x2, y2 = (float(v) for v in box["xyxy"])
    x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
    y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{int(box['class_id'])} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
