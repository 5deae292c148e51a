"""Every MQTT topic edgedet publishes, in one place: ``<prefix>/<node>/...``.

| topic | payload | retained |
|---|---|---|
| ``<prefix>/<node>/status`` | ``online`` / ``offline`` (Last Will) / ``stopped`` | yes |
| ``<prefix>/<node>/info`` | version, model, cameras, start id of the running process (JSON) | yes |
| ``<prefix>/<node>/feedback`` | a verdict on an event, sent *to* the node (JSON, see docs/FLEET.md) | no |
| ``<prefix>/<node>/<camera>/status`` | ``online`` / ``offline`` | yes |
| ``<prefix>/<node>/<camera>/detections`` | one JSON message per processed frame | no |
| ``<prefix>/<node>/<camera>/events`` | event ``new`` / ``update`` / ``end`` (JSON) | no |
| ``<prefix>/<node>/<camera>/snapshot`` | the latest event snapshot (JPEG) | yes |
| ``<prefix>/<node>/<camera>/<label>/active`` | ``ON`` while an event of that label is active (``label_level``) | yes |
| ``<prefix>/<node>/<camera>/stats`` | fps and latency over the last interval (JSON) | yes |
| ``<prefix>/<node>/<camera>/profile`` | the active profile's name (``base``: the camera's own settings) | yes |
| ``<discovery>/<component>/<node>_<entity>/<object>/config`` | a Home Assistant entity (JSON) | yes |
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

_LEVEL_SPECIALS = ("/", "+", "#", "\0")


def _check_name(what: str, value: str, *, levels: bool = False) -> None:
    """Reject names that would change the topic structure (wildcards, extra or empty levels)."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    forbidden = ("+", "#", "\0") if levels else ("/", "+", "#", "\0")
    bad = [c for c in forbidden if c in value]
    if bad:
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic (contains {bad[0]!r})")
    if levels and "" in value.split("/"):
        raise ValueError(f"{what} {value!r} has an empty level (leading, trailing or double '/')")


def label_level(label: str) -> str:
    """A model label as one topic level: the label itself when it is safe; else (``/``, ``+``, ``#``,
    NUL, or empty) those characters as ``_`` plus ``_`` and the CRC-32 of the label in hex, so two
    labels never share a level: ``person/car`` -> ``person_car_1b2c3d4e``. Events and Home Assistant
    both go through ``Topics.active``, so they agree."""
    if label and not any(c in label for c in _LEVEL_SPECIALS):
        return label
    safe = "".join("_" if c in _LEVEL_SPECIALS else c for c in label)
    return f"{safe or 'label'}_{zlib.crc32(label.encode('utf-8')):08x}"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one node. ``prefix`` may have several levels (``site/edgedet``)."""

    prefix: str
    node: str

    def __post_init__(self) -> None:
        _check_name("MQTT topic prefix", self.prefix, levels=True)
        _check_name("node id", self.node)

    def node_status(self) -> str:
        return f"{self.prefix}/{self.node}/status"

    def info(self) -> str:
        """Retained node info (``edgedet.outputs.node``; schema ``node_info``)."""
        return f"{self.prefix}/{self.node}/info"

    def feedback(self) -> str:
        """Verdicts on this node's events, posted by ``edgedet fleet`` (schema ``feedback``)."""
        return f"{self.prefix}/{self.node}/feedback"

    def camera_status(self, camera: str) -> str:
        return self.camera_prefix(camera) + "status"

    def detections(self, camera: str) -> str:
        return self.camera_prefix(camera) + "detections"

    def events(self, camera: str) -> str:
        return self.camera_prefix(camera) + "events"

    def snapshot(self, camera: str) -> str:
        return self.camera_prefix(camera) + "snapshot"

    def active(self, camera: str, label: str) -> str:
        """The label's retained ON/OFF topic; any label works (see ``label_level``)."""
        return self.camera_prefix(camera) + f"{label_level(label)}/active"

    def camera_retained(self, camera: str) -> tuple[str, ...]:
        """The retained topics of a camera that do not depend on a label (cleared when it is removed)."""
        return self.camera_status(camera), self.snapshot(camera), self.stats(camera), self.profile(camera)

    def camera_prefix(self, camera: str) -> str:
        """``<prefix>/<node>/<camera>/``: every topic of that camera starts with it."""
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/"

    def profile(self, camera: str) -> str:
        """The camera's active profile (edgedet/profile_runner.py), retained."""
        return self.camera_prefix(camera) + "profile"

    def stats(self, camera: str) -> str:
        return self.camera_prefix(camera) + "stats"

    def discovery(self, discovery_prefix: str, component: str, entity: str, object_id: str) -> str:
        """Home Assistant's ``<discovery_prefix>/<component>/<node id>/<object id>/config``, with node
        id ``<node>_<entity>`` (``entity``: a camera, or a camera and a label id)."""
        _check_name("Home Assistant discovery prefix", discovery_prefix, levels=True)
        for what, value in (("component", component), ("entity", entity), ("object id", object_id)):
            _check_name(f"Home Assistant {what}", value)
        return f"{discovery_prefix}/{component}/{self.node}_{entity}/{object_id}/config"
