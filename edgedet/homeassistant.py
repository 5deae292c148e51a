"""Home Assistant MQTT discovery (opt-in) and the per-camera stats topic.

With ``homeassistant.discovery: true`` the daemon keeps retained discovery configs on the broker
through ``MqttPublisher.set_retained`` (re-sent on every reconnect, so a broker that lost its
retained messages gets them back). Topics follow HA's documented
``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config``; with the default discovery
prefix ``homeassistant``, MQTT prefix ``edgedet``, node ``dock`` and camera ``gate``:

=======================================================  =========================================
discovery topic (``homeassistant/...``)                  entity, state topic (``edgedet/dock/...``)
=======================================================  =========================================
``binary_sensor/dock_gate_<label id>/active/config``     event state of one label: ``gate/<label>/active``
                                                         ``ON`` / ``OFF`` (only with events enabled)
``binary_sensor/dock_gate/status/config``                camera connectivity: ``gate/status``
                                                         ``online`` / ``offline``
``sensor/dock_gate/fps/config``                          processed frames per second: ``gate/stats``
``sensor/dock_gate/latency_p50/config`` (and ``p95``)    end-to-end latency in ms: ``gate/stats``
``sensor/dock_gate/profile/config``                      the active profile: ``gate/profile`` (``base``,
                                                         ``night``, ...; edgedet/profile_runner.py)
=======================================================  =========================================

Labels are the model's class names, limited to ``model.classes`` when set; a label's id is its
lower-case slug (``traffic light`` -> ``traffic_light``). Every entity belongs to one device per
node (identifiers ``edgedet_<node>``) and is available while ``<prefix>/<node>/status`` is
``online`` -- ``offline`` (the Last Will) and ``stopped`` (clean shutdown) both mean unavailable.
Entities of a camera removed by a config reload, or all of them when discovery is switched off,
are deleted (empty retained config). Configs of cameras removed while the daemon was not running
stay on the broker: delete them in HA or clear the retained topics.

Stats: ``<prefix>/<node>/<camera>/stats``, retained JSON every ``STATS_INTERVAL_S`` seconds
(only with discovery on), computed from the frames the daemon finished (after publishing)::

    {"fps": 4.9, "latency_ms_p50": 182.4, "latency_ms_p95": 240.1, "frames": 49, "interval_s": 10.0}

``latency_ms_*`` are ``null`` when no frame was finished in the interval (HA shows ``unknown``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgedet import __version__
from edgedet.config import HomeAssistantConfig
from edgedet.outputs.topics import Topics

__all__ = [
    "CameraStats",
    "DiscoveryConfig",
    "HomeAssistant",
    "discovery_configs",
    "discovery_labels",
    "label_device_class",
    "label_ids",
    "stats_payload",
]

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 10.0
#: Latency samples kept per camera and interval (a 30 fps camera needs 300 per 10 s).
MAX_SAMPLES = 10_000
#: binary_sensor device class by (lower-case) label; every other label is ``motion``.
LABEL_DEVICE_CLASSES: dict[str, str] = {
    "person": "occupancy",
    "people": "occupancy",
    "pedestrian": "occupancy",
    "smoke": "smoke",
    "fire": "heat",
    "flame": "heat",
    "fall": "safety",
}
DEFAULT_DEVICE_CLASS = "motion"

# The node status topic carries online / offline / stopped; HA compares the rendered value with
# payload_available / payload_not_available, so everything but "online" becomes "offline".
_AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"
_SLUG_RE = re.compile(r"[^a-z0-9]+")


class RetainedPublisher(Protocol):
    """What this module needs from ``edgedet.outputs.client.MqttPublisher``."""

    def set_retained(self, topic: str, payload: bytes | str | None) -> None: ...


# --------------------------------------------------------------------------- pure helpers


def slug(text: str) -> str:
    """Lower case, every run of characters other than ``a-z0-9`` replaced by ``_`` (may be '')."""
    return _SLUG_RE.sub("_", text.lower()).strip("_")


def label_ids(labels: Iterable[str]) -> dict[str, str]:
    """A stable ``[a-z0-9_]`` id per label for topics and entity ids: its slug, or -- when the slug
    is empty or shared by another label (``a b`` / ``a_b``) -- the slug plus a hash of the label."""
    unique = list(dict.fromkeys(labels))
    slugs = {label: slug(label) for label in unique}
    counts = Counter(slugs.values())
    out: dict[str, str] = {}
    for label, s in slugs.items():
        if s and counts[s] == 1:
            out[label] = s
        else:
            out[label] = f"{s or 'label'}_{zlib.crc32(label.encode('utf-8')):08x}"
    return out


def discovery_labels(names: Sequence[str], classes: Sequence[str | int] | None) -> tuple[str, ...]:
    """The labels to announce: the model's ``names``, limited to ``model.classes`` (labels or class
    ids; unknown entries are ignored -- the app rejects them) when set. In model order."""
    if classes is None:
        return tuple(dict.fromkeys(names))
    ids = {c for c in classes if isinstance(c, int)}
    labels = {c for c in classes if isinstance(c, str)}
    return tuple(dict.fromkeys(n for i, n in enumerate(names) if i in ids or n in labels))


def label_device_class(label: str) -> str:
    """The binary_sensor device class for a label (``person`` -> ``occupancy``, ...)."""
    return LABEL_DEVICE_CLASSES.get(label.strip().lower(), DEFAULT_DEVICE_CLASS)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """One retained discovery message."""

    component: str  # binary_sensor | sensor
    topic: str  # <discovery prefix>/<component>/<node id>/<object id>/config
    config: dict[str, Any] = field(hash=False)

    def payload(self) -> bytes:
        return json.dumps(self.config, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def discovery_configs(
    *,
    topics: Topics,
    cameras: Sequence[str],
    labels: Sequence[str],
    discovery_prefix: str = "homeassistant",
    events: bool = True,
    version: str = __version__,
) -> list[DiscoveryConfig]:
    """Every discovery config for ``cameras`` (pure). ``events`` False leaves out the label
    binary_sensors (nothing would publish their state). Labels that cannot be an MQTT topic
    level, and entities whose topic or unique id another one already took, are skipped."""
    node = topics.node
    device = {
        "identifiers": [f"edgedet_{node}"],
        "name": f"edgedet {node}",
        "model": "edgedet",
        "manufacturer": "edgedet",
        "sw_version": version,
    }
    origin = {"name": "edgedet", "sw_version": version}
    availability = [{
        "topic": topics.node_status(),
        "payload_available": "online",
        "payload_not_available": "offline",
        "value_template": _AVAILABILITY_TEMPLATE,
    }]
    usable = list(labels)  # any label: Topics.active makes it a safe level (label_level)
    ids = label_ids(usable)
    out: list[DiscoveryConfig] = []
    seen: set[str] = set()

    def add(component: str, entity: str, object_id: str, unique_id: str, name: str, **options: Any) -> None:
        topic = topics.discovery(discovery_prefix, component, entity, object_id)
        if topic in seen or unique_id in seen:
            log.warning("Home Assistant discovery: %s clashes with another entity (camera and label names); "
                        "skipped", topic)
            return
        seen.update((topic, unique_id))
        config: dict[str, Any] = {
            "name": name,
            "unique_id": unique_id,
            "default_entity_id": f"{component}.{slug(unique_id)}",
            **options,
            "availability": availability,
            "availability_mode": "latest",
            "qos": 1,
            "device": device,
            "origin": origin,
        }
        out.append(DiscoveryConfig(component, topic, config))

    for camera in cameras:
        uid = f"edgedet_{node}_{camera}"
        add("binary_sensor", camera, "status", f"{uid}_status", f"{camera} connection",
            state_topic=topics.camera_status(camera), payload_on="online", payload_off="offline",
            device_class="connectivity", entity_category="diagnostic")
        add("sensor", camera, "fps", f"{uid}_fps", f"{camera} fps",
            state_topic=topics.stats(camera), value_template="{{ value_json.fps }}", unit_of_measurement="fps",
            state_class="measurement", suggested_display_precision=1, entity_category="diagnostic")
        for q in ("p50", "p95"):
            add("sensor", camera, f"latency_{q}", f"{uid}_latency_{q}", f"{camera} latency {q}",
                state_topic=topics.stats(camera), value_template=f"{{{{ value_json.latency_ms_{q} }}}}",
                unit_of_measurement="ms", device_class="duration", state_class="measurement",
                suggested_display_precision=0, entity_category="diagnostic")
        add("sensor", camera, "profile", f"{uid}_profile", f"{camera} profile", state_topic=topics.profile(camera),
            icon="mdi:theme-light-dark", entity_category="diagnostic")
        if events:
            for label in usable:
                add("binary_sensor", f"{camera}_{ids[label]}", "active", f"{uid}_{ids[label]}_active",
                    f"{camera} {label}", state_topic=topics.active(camera, label), payload_on="ON",
                    payload_off="OFF", device_class=label_device_class(label))
    return out


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats_payload(frames: int, elapsed_s: float, latencies_s: Sequence[float]) -> dict[str, Any]:
    """The stats message: fps over ``elapsed_s``; latency percentiles (nearest rank, ms) of the
    sampled latencies, ``None`` without samples."""
    ordered = sorted(latencies_s)
    p50 = round(_nearest_rank(ordered, 0.50) * 1000.0, 1) if ordered else None
    p95 = round(_nearest_rank(ordered, 0.95) * 1000.0, 1) if ordered else None
    fps = round(frames / elapsed_s, 2) if elapsed_s > 0 else 0.0
    return {"fps": fps, "latency_ms_p50": p50, "latency_ms_p95": p95, "frames": frames,
            "interval_s": round(elapsed_s, 2)}


# --------------------------------------------------------------------------- stats


@dataclass(slots=True)
class _Window:
    start: float
    frames: int = 0
    latencies: list[float] = field(default_factory=list)


class CameraStats:
    """Per-camera fps and end-to-end latency, published retained to ``Topics.stats(camera)``.

    ``observe()`` from any thread (the app's sink); ``tick()`` from the main loop publishes every
    ``interval_s``; ``set_cameras()`` when the cameras change (a removed camera's topic is cleared).
    """

    def __init__(self, publisher: RetainedPublisher, topics: Topics, interval_s: float = STATS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"CameraStats.interval_s must be > 0 (got {interval_s})")
        self.publisher = publisher
        self.topics = topics
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._due = clock() + interval_s

    @property
    def cameras(self) -> list[str]:
        with self._lock:
            return list(self._windows)

    def set_cameras(self, cameras: Iterable[str]) -> None:
        wanted = list(cameras)
        now = self._clock()
        with self._lock:
            gone = [c for c in self._windows if c not in wanted]
            for camera in gone:
                del self._windows[camera]
            for camera in wanted:
                self._windows.setdefault(camera, _Window(now))
        for camera in gone:
            self.publisher.set_retained(self.topics.stats(camera), None)

    def observe(self, camera: str, latency_s: float) -> None:
        """One finished frame of ``camera`` (ignored for a camera not in the set)."""
        with self._lock:
            window = self._windows.get(camera)
            if window is None:
                return
            window.frames += 1
            if len(window.latencies) < MAX_SAMPLES:
                window.latencies.append(latency_s)

    def tick(self, now: float | None = None) -> bool:
        """Publish every camera's stats when the interval is over; True when it did."""
        now = self._clock() if now is None else now
        if now < self._due:
            return False
        self._due = max(self._due + self.interval_s, now + self.interval_s / 2)
        with self._lock:
            done = {c: w for c, w in self._windows.items()}
            self._windows = {c: _Window(now) for c in done}
        for camera, window in done.items():
            payload = stats_payload(window.frames, now - window.start, window.latencies)
            self.publisher.set_retained(self.topics.stats(camera), json.dumps(payload, separators=(",", ":")))
        return True


# --------------------------------------------------------------------------- the daemon's part


class HomeAssistant:
    """Discovery configs and camera stats of one node, kept in line with the running config.

    ``configure(section, cameras, names, ...)`` at start and after every config reload (main thread);
    ``observe(camera, latency_s)`` from the inference workers; ``tick()`` from the main loop.
    With discovery off it publishes nothing and ``observe`` is a dictionary lookup.
    """

    def __init__(self, publisher: RetainedPublisher, topics: Topics, *, interval_s: float = STATS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, version: str = __version__,
                 stats: bool = False) -> None:
        """``stats``: publish the per-camera stats topic even with discovery off (the fleet contract)."""
        self.publisher = publisher
        self._topics = topics
        self._always_stats = stats
        self.version = version
        self.stats = CameraStats(publisher, topics, interval_s, clock)
        self._published: dict[str, bytes] = {}
        self._known: set[str] = set()
        self._names: tuple[str, ...] = ()

    @property
    def topics(self) -> list[str]:
        """The discovery topics currently announced."""
        return list(self._published)

    def configure(self, ha: HomeAssistantConfig, cameras: Sequence[str], names: Sequence[str] | None = None, *,
                  classes: Sequence[str | int] | None, events_enabled: bool) -> None:
        """Announce (or withdraw) entities for ``cameras`` under the ``homeassistant`` section ``ha``;
        ``names``: the model's labels (None keeps the previous ones), limited to ``classes``
        (``model.classes``); ``events_enabled`` (``events.enabled``): announce the label entities.
        The node id and topic prefix come from the constructor's ``topics`` (they need a restart)."""
        if names is not None:
            self._names = tuple(names)
        labels = discovery_labels(self._names, classes)
        desired: dict[str, bytes] = {}
        if ha.discovery:
            configs = discovery_configs(topics=self._topics, cameras=cameras, labels=labels,
                                        discovery_prefix=ha.prefix, events=events_enabled, version=self.version)
            desired = {c.topic: c.payload() for c in configs}
        removed = [t for t in self._published if t not in desired]
        changed = {t: p for t, p in desired.items() if self._published.get(t) != p}
        for topic in removed:
            self.publisher.set_retained(topic, None)  # an empty config deletes the entity in HA
        for topic, payload in changed.items():
            self.publisher.set_retained(topic, payload)
        # A camera new to this process has no active event: publish OFF so HA shows "off" (not
        # "unknown", nor an "ON" left behind by a crashed run). Existing cameras are left alone.
        new = [c for c in cameras if c not in self._known]
        if ha.discovery and events_enabled:
            for camera in new:
                for label in labels:
                    self.publisher.set_retained(self._topics.active(camera, label), "OFF")
        self._known = set(cameras)
        self._published = desired
        self.stats.set_cameras(cameras if ha.discovery or self._always_stats else [])
        if removed or changed:
            log.info("Home Assistant discovery under %s/: %d entit%s announced, %d removed", ha.prefix,
                     len(desired), "y" if len(desired) == 1 else "ies", len(removed))

    def observe(self, camera: str, latency_s: float) -> None:
        self.stats.observe(camera, latency_s)

    def tick(self) -> None:
        self.stats.tick()
