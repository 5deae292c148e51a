"""The events stage of the daemon: one tracker per camera, and publishing what they produce.

Topics (see ``edgedet/outputs/topics.py``): ``events`` (JSON, QoS 1, through the outbox),
``snapshot`` (JPEG, retained) and ``<label>/active`` (``ON`` / ``OFF``, retained) of each camera.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from edgedet.config import CameraConfig, EventsConfig
from edgedet.events.messages import EventMessage, active_payload
from edgedet.events.snapshots import SnapshotStore
from edgedet.events.tracker import EventRules, EventTracker
from edgedet.events.zones import zones_from_config
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.types import Detections

__all__ = ["EventPublisher", "EventStage"]

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    """What the stage needs from ``edgedet.outputs.client.MqttPublisher``."""

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool: ...

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


def _store(events: EventsConfig, state_dir: str | os.PathLike[str]) -> SnapshotStore | None:
    """The snapshot store, or None when events or their snapshots are disabled."""
    return SnapshotStore.from_config(events.snapshots, state_dir) if events.enabled else None


class EventStage:
    """Feeds every processed frame to its camera's tracker and publishes what comes out."""

    def __init__(self, trackers: dict[str, EventTracker], publisher: EventPublisher, topics: Topics,
                 metrics: Metrics) -> None:
        self.trackers = trackers
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self._unusable: set[str] = set()  # labels that cannot be a topic level (warned once)

    @classmethod
    def from_config(cls, events: EventsConfig, cameras: Mapping[str, CameraConfig],
                    state_dir: str | os.PathLike[str], publisher: EventPublisher, topics: Topics,
                    metrics: Metrics) -> EventStage | None:
        """The stage for ``cameras`` (name -> its config), or None when events are disabled."""
        if not events.enabled:
            return None
        store = _store(events, state_dir)
        trackers = {name: EventTracker.from_config(name, cam, events, store) for name, cam in cameras.items()}
        return cls(trackers, publisher, topics, metrics)

    def reconfigure(self, events: EventsConfig, cameras: Mapping[str, CameraConfig],
                    state_dir: str | os.PathLike[str]) -> None:
        """Config reload: new thresholds and zones apply at once; active events carry on. Trackers of
        cameras not in ``cameras`` end their events; new cameras get a tracker."""
        store = _store(events, state_dir)
        rules = EventRules.from_config(events)
        for name in list(self.trackers):
            if name not in cameras:
                self._send(self.trackers.pop(name).close())
        for name, cam in cameras.items():
            tracker = self.trackers.get(name)
            if tracker is None:
                self.trackers[name] = EventTracker.from_config(name, cam, events, store)
                continue
            zones, masks = zones_from_config(cam)
            tracker.reconfigure(rules, zones, masks)

    def on_frame(self, dets: Detections, image: np.ndarray | None) -> None:
        tracker = self.trackers.get(dets.camera)
        if tracker is not None:
            self._send(tracker.update(dets, image))

    def tick(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.tick())

    def close(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.close())

    def _send(self, messages: list[EventMessage]) -> None:
        for msg in messages:
            self.publisher.publish(self.topics.events(msg.camera), msg.to_json(), qos=1, retain=False,
                                   kind="events")
            if msg.snapshot_jpeg is not None:
                self.publisher.publish(self.topics.snapshot(msg.camera), msg.snapshot_jpeg, qos=1, retain=True,
                                       kind="snapshot")
            # Retained state, re-sent on every reconnect (so a broker that lost it gets it back).
            active = self._active_topic(msg.camera, msg.label)
            if active is not None:
                self.publisher.set_retained(active, active_payload(msg))
            self.metrics.events.labels(camera=msg.camera, label=msg.label, type=msg.type).inc()
            self.metrics.events_active.labels(camera=msg.camera, label=msg.label).set(0 if msg.type == "end" else 1)
            log.info("event %s %s: camera %s label %s score %.2f", msg.type, msg.id, msg.camera, msg.label,
                     msg.score)

    def _active_topic(self, camera: str, label: str) -> str | None:
        """The ``<label>/active`` topic, or None for a label that cannot be a topic level (the
        events topic still carries its events; Home Assistant has no entity for it either)."""
        try:
            return self.topics.active(camera, label)
        except ValueError as exc:
            if label not in self._unusable:
                self._unusable.add(label)
                log.warning("events: no retained active state for label %r: %s", label, exc)
            return None
