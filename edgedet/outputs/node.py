"""Node identity on a shared broker: the retained ``<prefix>/<node>/info`` and duplicate detection.

``node_id`` must be unique per broker (docs/FLEET.md). Each process draws a random ``start_id``
and publishes it in its retained info (schema ``edgedet.schemas.load_schema("node_info")``),
re-sent on every reconnect like the other retained state. The node also subscribes to its own
info topic: an info message *published live* (not a retained copy delivered on subscribe, which
may be a previous run's) with another ``start_id`` means a second process is running with the
same ``node_id``. It is logged at ERROR (once per foreign start id) and our info is published
once more, so that the other process sees ours and logs too; the last writer's info stays
retained, and ``edgedet fleet`` flags the node as duplicated when start ids alternate.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from edgedet import __version__
from edgedet.outputs.topics import Topics

log = logging.getLogger("edgedet.publish")

__all__ = ["NodeAnnouncer", "node_info", "precision"]


class NodePublisher(Protocol):
    """What the announcer needs from ``MqttPublisher``."""

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...

    def subscribe(self, topic: str, callback: Callable[[str, bytes, bool], None], qos: int = 1) -> None: ...


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def precision(np_dtype: Any) -> str:
    """``fp16`` / ``fp32`` / ... from a detector's input dtype."""
    return {"float16": "fp16", "float32": "fp32", "float64": "fp64"}.get(str(np.dtype(np_dtype)), str(np_dtype))


def node_info(
    *, node: str, start_id: str, started_at: float, model: str, backend: str, precision: str,
    cameras: Sequence[str], console_url: str | None = None, version: str = __version__,
) -> dict[str, Any]:
    """The info payload (pure)."""
    return {
        "node": node,
        "version": version,
        "start_id": start_id,
        "started_at": iso_utc(started_at),
        "model": model,
        "backend": backend,
        "precision": precision,
        "cameras": list(cameras),
        "console_url": console_url,
    }


class NodeAnnouncer:
    """Publishes this process's node info and watches for another process with the same node id."""

    def __init__(self, publisher: NodePublisher, topics: Topics, *, start_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.publisher = publisher
        self.topics = topics
        self.start_id = start_id or uuid.uuid4().hex[:12]
        self.started_at = clock()
        self._payload: str | None = None
        self._lock = threading.Lock()
        self._foreign: dict[str, dict[str, Any]] = {}
        publisher.subscribe(topics.info(), self._on_info)

    @property
    def duplicates(self) -> list[str]:
        """Start ids of other processes seen publishing this node's info."""
        with self._lock:
            return list(self._foreign)

    def announce(self, *, model: str, backend: str, precision: str, cameras: Sequence[str],
                 console_url: str | None = None) -> dict[str, Any]:
        """Publish (retained, re-sent on reconnect) the info of this process; again after a reload."""
        info = node_info(node=self.topics.node, start_id=self.start_id, started_at=self.started_at, model=model,
                         backend=backend, precision=precision, cameras=cameras, console_url=console_url)
        payload = json.dumps(info, separators=(",", ":"))
        with self._lock:
            self._payload = payload
        self.publisher.set_retained(self.topics.info(), payload)
        return info

    def _on_info(self, topic: str, payload: bytes, retained: bool) -> None:
        """paho's loop thread. A retained copy is history (maybe our previous run): ignored."""
        if retained or not payload:
            return
        try:
            other = json.loads(payload)
            start_id = str(other["start_id"])
        except (ValueError, TypeError, KeyError):
            log.warning("unreadable node info on %s (not edgedet's format): ignored", topic)
            return
        if start_id == self.start_id:
            return
        with self._lock:
            first = start_id not in self._foreign
            self._foreign[start_id] = other
            mine = self._payload
        if not first:
            return
        log.error(
            "DUPLICATE NODE ID: another process publishes as node %r on this broker (start id %s, started %s, "
            "version %s; this process is start id %s). node_id must be unique per broker: its status, events "
            "and stats are mixed with ours until one of them is renamed",
            self.topics.node, start_id, other.get("started_at"), other.get("version"), self.start_id,
        )
        if mine is not None:
            self.publisher.set_retained(topic, mine)  # so that the other process sees us too
