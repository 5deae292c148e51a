"""The fleet's latest state, built from the central broker's messages alone (docs/FLEET.md).

``FleetState.apply(topic, payload, retained, now)`` takes one MQTT message under ``<prefix>/`` and
returns what it changed (a ``Change``, or None for a topic outside the contract); ``snapshot()``
returns a JSON-ready copy for the API. Pure and thread-safe: no I/O, no clock of its own.

A node is ``online`` when its retained ``status`` is ``online`` and its bridge's retained ``uplink``
(``1`` / ``0``, written by the node's local mosquitto: see scripts/install.sh --local-broker) is
not ``0``: a node behind a cut uplink keeps a retained ``online`` at the centre, but the centre's
broker publishes the bridge's Last Will ``0`` on ``uplink``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "FleetState", "parse_topic"]

NODE_TOPICS = ("status", "info", "uplink")
CAMERA_TOPICS = ("status", "stats", "events", "snapshot")
#: Start ids remembered per node to tell a restart (a new id) from two processes (ids alternating).
MAX_START_IDS = 8
MAX_ACTIVE_EVENTS = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """One applied message: ``kind`` is a topic kind (``status``, ``info``, ``uplink``,
    ``camera_status``, ``stats``, ``event``, ``snapshot``, ``active``); ``availability`` is the
    node's new ``online`` value when this message changed it."""

    kind: str
    node: str
    camera: str | None = None
    event: dict[str, Any] | None = None
    availability: bool | None = None
    duplicate: bool = False


def parse_topic(prefix: str, topic: str) -> tuple[str, str | None, str, str | None] | None:
    """``(node, camera, kind, label)`` of a contract topic under ``prefix``, else None."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) == 2 and parts[1] in NODE_TOPICS:
        return parts[0], None, parts[1], None
    if len(parts) == 3 and parts[2] in CAMERA_TOPICS:
        return parts[0], parts[1], parts[2], None
    if len(parts) == 4 and parts[3] == "active":
        return parts[0], parts[1], "active", parts[2]
    return None


@dataclass
class _Camera:
    status: str | None = None
    stats: dict[str, Any] | None = None
    active: dict[str, bool] = field(default_factory=dict)
    snapshot_at: float | None = None


@dataclass
class _Node:
    status: str | None = None
    uplink: bool | None = None
    info: dict[str, Any] | None = None
    start_ids: list[str] = field(default_factory=list)
    duplicate: bool = False
    last_seen: float = 0.0
    changed_at: float = 0.0
    cameras: dict[str, _Camera] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.status == "online" and self.uplink is not False


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


class FleetState:
    """Latest state of every node seen under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._active: dict[tuple[str, str], dict[str, Any]] = {}
        self._snapshots: dict[tuple[str, str], bytes] = {}
        self.version = 0  # bumped on every change: lets a client poll cheaply
        self.rejected = 0  # messages on contract topics with an unreadable payload

    # ---------------------------------------------------------------- ingest

    def apply(self, topic: str, payload: bytes, retained: bool, now: float) -> Change | None:
        parsed = parse_topic(self.prefix, topic)
        if parsed is None:
            return None
        node_id, camera, kind, label = parsed
        with self._lock:
            node = self._nodes.setdefault(node_id, _Node())
            was_online = node.online
            node.last_seen = now
            change = self._apply(node, node_id, camera, kind, label, payload, now)
            if change is None:
                self.rejected += 1
                return None
            self.version += 1
            if node.online != was_online:
                node.changed_at = now
                change = Change(change.kind, change.node, change.camera, change.event, node.online, change.duplicate)
            return change

    def _apply(self, node: _Node, node_id: str, camera: str | None, kind: str, label: str | None,
               payload: bytes, now: float) -> Change | None:
        text = payload.decode("utf-8", "replace").strip()
        if camera is None:
            if kind == "status":
                node.status = text or None
                return Change("status", node_id)
            if kind == "uplink":
                node.uplink = None if not text else text not in ("0", "offline")
                return Change("uplink", node_id)
            info = _json(payload) if payload else None
            if payload and not isinstance(info, dict):
                return None
            node.info = info
            start_id = str(info.get("start_id", "")) if info else ""
            newly_duplicate = False
            if start_id:
                if start_id in node.start_ids and node.start_ids[-1] != start_id and not node.duplicate:
                    node.duplicate = newly_duplicate = True  # an older start id came back: two processes
                if start_id in node.start_ids:
                    node.start_ids.remove(start_id)
                node.start_ids = [*node.start_ids, start_id][-MAX_START_IDS:]
            return Change("info", node_id, duplicate=newly_duplicate)
        cam = node.cameras.setdefault(camera, _Camera())
        if kind == "status":
            cam.status = text or None
            return Change("camera_status", node_id, camera)
        if kind == "stats":
            stats = _json(payload) if payload else None
            if payload and not isinstance(stats, dict):
                return None
            cam.stats = stats
            return Change("stats", node_id, camera)
        if kind == "active":
            assert label is not None
            cam.active[label] = text == "ON"
            return Change("active", node_id, camera)
        if kind == "snapshot":
            if payload:
                self._snapshots[(node_id, camera)] = payload
                cam.snapshot_at = now
            return Change("snapshot", node_id, camera)
        event = _json(payload)
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or event.get("type") not in (
                "new", "update", "end"):
            return None
        event = {**event, "node": node_id, "camera": camera, "received_at": now}
        key = (node_id, event["id"])
        if event["type"] == "end":
            self._active.pop(key, None)
        elif len(self._active) < MAX_ACTIVE_EVENTS or key in self._active:
            self._active[key] = event
        return Change("event", node_id, camera, event=event)

    # ---------------------------------------------------------------- reads

    def snapshot_jpeg(self, node: str, camera: str) -> bytes | None:
        with self._lock:
            return self._snapshots.get((node, camera))

    def nodes(self) -> list[dict[str, Any]]:
        """Every node with its cameras, sorted by node id (JSON-ready)."""
        with self._lock:
            return [self._node_dict(name, n) for name, n in sorted(self._nodes.items())]

    def active_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((dict(e) for e in self._active.values()), key=lambda e: (e["node"], e["received_at"]))

    def _node_dict(self, name: str, n: _Node) -> dict[str, Any]:
        cams = set(n.cameras) | set((n.info or {}).get("cameras") or [])
        return {
            "node": name,
            "online": n.online,
            "status": n.status,
            "uplink": n.uplink,
            "duplicate": n.duplicate,
            "info": n.info,
            "last_seen": n.last_seen,
            "changed_at": n.changed_at,
            "cameras": [self._camera_dict(c, n.cameras.get(c, _Camera())) for c in sorted(cams)],
        }

    @staticmethod
    def _camera_dict(name: str, c: _Camera) -> dict[str, Any]:
        stats = c.stats or {}
        return {
            "camera": name,
            "status": c.status,
            "fps": stats.get("fps"),
            "latency_ms_p50": stats.get("latency_ms_p50"),
            "latency_ms_p95": stats.get("latency_ms_p95"),
            "active": sorted(label for label, on in c.active.items() if on),
            "snapshot_at": c.snapshot_at,
        }
