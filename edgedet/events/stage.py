"""The events stage of the daemon: one tracker per camera, and publishing what they produce.

Topics (see ``edgedet/outputs/topics.py``): ``events`` (JSON, QoS 1, through the outbox),
``snapshot`` (JPEG, retained) and ``<label>/active`` (``ON`` / ``OFF``, retained) of each camera.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from edgedet.config import CameraConfig, ClipConfig, EventsConfig
from edgedet.events.clips import ClipRecorder, ClipSettings
from edgedet.events.messages import EventMessage
from edgedet.events.snapshots import SnapshotStore
from edgedet.events.tracker import EventRules, EventTracker
from edgedet.events.zones import zones_from_config
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.tracking import TrackingStage
from edgedet.types import Detections

__all__ = ["EventPublisher", "EventStage"]

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    """What the stage needs from ``edgedet.outputs.client.MqttPublisher``."""

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool: ...

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


class EventStage:
    """Feeds every processed frame to its camera's tracker and publishes what comes out."""

    def __init__(self, trackers: dict[str, EventTracker], publisher: EventPublisher, topics: Topics,
                 metrics: Metrics, store: SnapshotStore | None = None, tracking: TrackingStage | None = None,
                 clips: ClipRecorder | None = None) -> None:
        self.trackers = trackers
        self.tracking = tracking  # None: events per label (no tracker)
        self.clips = clips
        self._clip_paths: dict[str, str] = {}  # event id -> its clip path
        self._active: dict[tuple[str, str], set[str]] = {}  # (camera, label) -> ids of its active events
        self._clip_config: ClipConfig | None = None
        self.store = store  # the one snapshot store of the daemon (limits across cameras and reloads)
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
        store = SnapshotStore.from_config(events.snapshots, state_dir)
        trackers = {name: EventTracker.from_config(name, cam, events, store) for name, cam in cameras.items()}
        tracking = TrackingStage(events.tracking, cameras)
        stage = cls(trackers, publisher, topics, metrics, store, tracking, None)
        stage._start_clips(events, state_dir)
        return stage

    def reconfigure(self, events: EventsConfig, cameras: Mapping[str, CameraConfig],
                    state_dir: str | os.PathLike[str]) -> None:
        """Config reload: new thresholds, zones and snapshot settings apply at once; active events carry
        on. Trackers of cameras not in ``cameras`` end their events; new cameras get a tracker.
        ``events.enabled: false`` ends every event and leaves no tracker (a later reload that enables
        events again starts them). The snapshot store stays the same one (its limits change)."""
        if not events.enabled:
            cameras = {}
        store = self._store(events, state_dir)
        rules = EventRules.from_config(events)
        if self.tracking is not None:
            self.tracking.reconfigure(events.tracking, cameras)
        if events.clips != self._clip_config:
            if self.clips is not None:
                self.clips.close()
                self.clips = None
            self._start_clips(events, state_dir)
        for name in list(self.trackers):
            if name not in cameras:
                self._send(self.trackers.pop(name).close())
        for name, cam in cameras.items():
            tracker = self.trackers.get(name)
            if tracker is None:
                self.trackers[name] = EventTracker.from_config(name, cam, events, store)
                continue
            zones, masks = zones_from_config(cam)
            tracker.reconfigure(rules, zones, masks, snapshots=store)

    def retune(self, camera: str, events: EventsConfig, cam: CameraConfig, keep: Callable[[str], bool]) -> None:
        """A profile switch on one camera (edgedet/profile_runner.py): its thresholds (``events``), zones and
        masks (``cam``) apply at once; its active events continue, except those of labels ``keep`` rejects,
        which end now."""
        tracker = self.trackers.get(camera)
        if tracker is None:
            return
        zones, masks = zones_from_config(cam)
        tracker.reconfigure(EventRules.from_config(events), zones, masks, snapshots=self.store)
        self._send(tracker.end_labels([label for label in tracker.active() if not keep(label)]))

    def _store(self, events: EventsConfig, state_dir: str | os.PathLike[str]) -> SnapshotStore | None:
        """The store for ``events.snapshots``: None when disabled, else the one store, re-limited."""
        snap = events.snapshots
        if not (events.enabled and snap.enabled):
            return None
        if self.store is None:
            self.store = SnapshotStore.from_config(snap, state_dir)
        else:
            self.store.configure(snap.keep, snap.max_mb, snap.crop)
        return self.store

    def forget_camera(self, camera: str) -> None:
        """A camera removed from the config: end its events and clear its ``<label>/active`` topics
        (empty retained messages, no longer re-sent on reconnect)."""
        tracker = self.trackers.pop(camera, None)
        if self.tracking is not None:
            self.tracking.forget(camera)
        messages = tracker.close() if tracker is not None else []
        self._send(messages)
        for label in dict.fromkeys(msg.label for msg in messages):
            topic = self._active_topic(camera, label)
            if topic is not None:
                self.publisher.set_retained(topic, None)

    def track(self, dets: Detections) -> Detections:
        """``dets`` with their track ids (unchanged when tracking is off or they are tracked already)."""
        return dets if self.tracking is None else self.tracking.assign(dets)

    def on_frame(self, dets: Detections, image: np.ndarray | None) -> None:
        dets = self.track(dets)
        tracker = self.trackers.get(dets.camera)
        if tracker is not None:
            self._send(tracker.update(dets, image))
        if self.clips is not None and image is not None:
            self.clips.offer(dets.camera, dets.t_wall, image, [(d, d.track_id) for d in dets.items])

    def tick(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.tick())

    def close(self) -> None:
        for tracker in self.trackers.values():
            self._send(tracker.close())
        if self.clips is not None:
            self.clips.close()

    def _send(self, messages: list[EventMessage]) -> None:
        for msg in messages:
            msg = self._with_clip(msg)
            self.publisher.publish(self.topics.events(msg.camera), msg.to_json(), qos=1, retain=False,
                                   kind="events")
            if msg.snapshot_jpeg is not None:
                self.publisher.publish(self.topics.snapshot(msg.camera), msg.snapshot_jpeg, qos=1, retain=True,
                                       kind="snapshot")
            # Retained state, re-sent on every reconnect (so a broker that lost it gets it back).
            # ON while any event of the label is active (with tracking, several objects may be).
            ids = self._active.setdefault((msg.camera, msg.label), set())
            if msg.type == "end":
                ids.discard(msg.id)
            else:
                ids.add(msg.id)
            active = self._active_topic(msg.camera, msg.label)
            if active is not None:
                self.publisher.set_retained(active, "ON" if ids else "OFF")
            self.metrics.events.labels(camera=msg.camera, label=msg.label, type=msg.type).inc()
            self.metrics.events_active.labels(camera=msg.camera, label=msg.label).set(1 if ids else 0)
            log.info("event %s %s: camera %s label %s score %.2f", msg.type, msg.id, msg.camera, msg.label,
                     msg.score)

    def _start_clips(self, events: EventsConfig, state_dir: str | os.PathLike[str]) -> None:
        """The clip recorder of ``events.clips`` (clips live next to the snapshots and share their limits)."""
        self._clip_config = events.clips
        c = events.clips
        if not (events.enabled and c.enabled):
            return
        settings = ClipSettings(pre_capture_s=c.pre_capture_s, post_capture_s=c.post_capture_s, ring_mb=c.ring_mb,
                                height=c.height)

        def written(camera: str, event_id: str, path: Path, frames: int) -> None:
            self.metrics.clips_written.labels(camera=camera).inc()
            if self.store is not None:
                self.store.adopt(path)

        self.clips = ClipRecorder(Path(state_dir) / "snapshots", settings, on_written=written,
                                  on_drop=lambda cam: self.metrics.clip_frames_dropped.labels(camera=cam).inc())
        self.clips.start()
        log.info("event clips: %s, %.0f s before to %.0f s after each event", self.clips.codec, c.pre_capture_s,
                 c.post_capture_s)

    def _with_clip(self, msg: EventMessage) -> EventMessage:
        """Start/end the event's clip and name it in the message."""
        if self.clips is None:
            return msg
        if msg.type == "new":
            self._clip_paths[msg.id] = str(self.clips.path_for(msg.camera, msg.id))
            self.clips.event_new(msg.camera, msg.id, msg.start_wall)
        path = self._clip_paths.get(msg.id)
        if msg.type == "end":
            self._clip_paths.pop(msg.id, None)
            self.clips.event_end(msg.camera, msg.id, time.time())
        return dataclasses.replace(msg, clip=path) if path is not None else msg

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
