"""Profiles at run time: each camera's active profile (``edgedet/profiles.py`` chooses it) applied like a
config reload of the keys it overrides, and motion-mode cameras kept busy while an event is in progress.

``ProfileRunner.tick()`` runs on the main thread (``app.py``, every tick). When a camera's profile
changes, its settings are ``ProfileConfig.apply(camera)`` (or the camera's own: profile ``base``):

- ``fps_limit`` and ``detect`` apply in place on the running capture thread (``CameraSet.tune``):
  no reconnect, the motion background is kept;
- ``zones``, ``masks`` and per-label ``events`` thresholds go to the camera's event tracker at once
  (``EventStage.retune``); ``labels`` limits what the camera reports (``ResultSink.labels``:
  detections messages, events, stats).

Events in progress across a switch: an event whose label the new profile still reports **continues**
(same id, next ``update`` under the new thresholds and zones); an event whose label it no longer
reports **ends** at the switch (an ``end`` message at once).

The active profile is published as ``edgedet_profile_active{camera,profile}`` (1 for the active one,
``base`` for the camera's own settings), the retained topic ``<prefix>/<node>/<camera>/profile`` (a
Home Assistant sensor with discovery on) and ``profile`` in ``/api/v1/cameras``.

While an event of a motion-mode camera is in progress, its floor tightens to half of the
shortest ``clear_after_s`` of the active labels, or of the camera's ``tracking.max_age_s`` if shorter
(``MotionGate.hold_interval_s``): an object that stops moving keeps being inferred often enough that
neither its event nor its track ends for want of frames.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from edgedet.capture.cameras import CameraSet
from edgedet.config import CameraConfig, EventsConfig
from edgedet.config.detect import LocationConfig, ProfileWhen
from edgedet.events.stage import EventStage
from edgedet.metrics import Metrics
from edgedet.motion import tube_labels
from edgedet.outputs.topics import Topics
from edgedet.profiles import IrImage, Location, ProfileSelector, Rule, Schedule, Sun, sun_elevation
from edgedet.results import ResultSink

log = logging.getLogger("edgedet.app")

BASE = "base"  # the camera's own settings (no profile matches)
HOLD_SHARE = 1 / 2  # of clear_after_s: the floor while an event is in progress (two chances before it ends)


class RetainedPublisher(Protocol):
    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def selector_rule(when: ProfileWhen) -> Rule:
    """A profile's ``when`` block as the selector's rule."""
    if when.schedule is not None:
        return Schedule(when.schedule.start, when.schedule.end)
    if when.sun is not None:
        return Sun(below=when.sun.below, above=when.sun.above)
    return IrImage(hold_frames=when.hold_frames)


@dataclass(slots=True)
class _Camera:
    base: CameraConfig
    selector: ProfileSelector
    uses_image: bool
    active: str | None = None  # None until first applied
    events: EventsConfig | None = None  # the thresholds in force (base or the profile's)


class ProfileRunner:
    """Chooses and applies every camera's profile; ``configure`` at start and after each reload."""

    def __init__(self, cams: CameraSet, events: EventStage | None, sink: ResultSink, publisher: RetainedPublisher,
                 topics: Topics, metrics: Metrics, clock: Callable[[], dt.datetime] = now_utc,
                 elevation: Callable[[Location, dt.datetime], float] = sun_elevation) -> None:
        self.cams = cams
        self.events = events
        self.sink = sink
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self._clock = clock
        self._elevation = elevation
        self._events_cfg = EventsConfig()
        self._cams: dict[str, _Camera] = {}
        self._failed: dict[str, str] = {}  # camera -> the last error logged (logged once)

    def active(self) -> dict[str, str]:
        """Camera -> its active profile (``base``: none)."""
        return {name: st.active or BASE for name, st in self._cams.items()}

    def configure(self, cameras: Mapping[str, CameraConfig], events: EventsConfig,
                  location: LocationConfig | None) -> None:
        """The running cameras and their profiles (start-up, and after every reload: a reload resets the
        trackers and may restart cameras, so every camera's profile is applied afresh)."""
        self._events_cfg = events
        self.cams.tube_labels = tube_labels(events)
        loc = None if location is None else Location(location.latitude, location.longitude, location.timezone)
        for name in [n for n in self._cams if n not in cameras]:
            for profile in [BASE, *self._cams.pop(name).base.profiles]:
                self.metrics.profile_active.remove(name, profile)
        self.sink.labels = {n: v for n, v in self.sink.labels.items() if n in cameras}
        for name, cam in cameras.items():
            rules = [(p, selector_rule(prof.when)) for p, prof in cam.profiles.items()]
            selector = ProfileSelector(rules, loc, self._elevation)
            self._cams[name] = _Camera(cam, selector, any(isinstance(r, IrImage) for _, r in rules))
        self.tick()

    def tick(self) -> None:
        now = self._clock()
        for name, st in self._cams.items():
            try:
                image = self.cams.latest(name) if st.uses_image else None
                chosen, _ = st.selector.update(now, image)
                if (chosen or BASE) != st.active:
                    self._apply(name, st, chosen or BASE)
                self._hold(name, st)
            except Exception as exc:  # noqa: BLE001 - a profile fault never stops detection
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self._failed.get(name):
                    self._failed[name] = reason
                    log.exception("camera %s: profile not applied (%s); keeping its current settings", name, reason)

    def _apply(self, name: str, st: _Camera, profile: str) -> None:
        base = st.base
        chosen = base.profiles.get(profile)
        cam = base if chosen is None else chosen.apply(base)
        events = self._events_cfg if chosen is None else chosen.apply_events(self._events_cfg)
        self.cams.tune(name, cam)
        labels = None if cam.labels is None else frozenset(cam.labels)
        reported = {n: v for n, v in self.sink.labels.items() if n != name}
        if labels is not None:
            reported[name] = labels
        self.sink.labels = reported  # one reference swap: the workers read it without a lock
        if self.events is not None:
            self.events.retune(name, events, cam, keep=lambda label: labels is None or label in labels)
        for p in [BASE, *base.profiles]:
            self.metrics.profile_active.labels(camera=name, profile=p).set(1 if p == profile else 0)
        self.publisher.set_retained(self.topics.profile(name), profile)
        if st.active is not None:
            log.info("camera %s: profile %s -> %s", name, st.active, profile)
        st.active, st.events = profile, events

    def _hold(self, name: str, st: _Camera) -> None:
        """Tighten a motion camera's floor while one of its events is in progress."""
        tracker = None if self.events is None else self.events.trackers.get(name)
        active = [] if tracker is None or st.events is None else list(tracker.active())
        interval = None
        if active and st.events is not None:
            clear = min(st.events.thresholds(label).clear_after_s for label in active)
            interval = min(clear, st.base.tracking.max_age_s) * HOLD_SHARE  # before the event, or its track, expires
        self.cams.hold(name, interval)
