"""Every MQTT topic edgedet publishes, in one place: ``<prefix>/<node>/...``.

| topic | payload | retained |
|---|---|---|
| ``<prefix>/<node>/status`` | ``online`` / ``offline`` (Last Will) / ``stopped`` | yes |
| ``<prefix>/<node>/<camera>/status`` | ``online`` / ``offline`` | yes |
| ``<prefix>/<node>/<camera>/detections`` | one JSON message per processed frame | no |
| ``<prefix>/<node>/<camera>/events`` | event ``new`` / ``update`` / ``end`` (JSON) | no |
| ``<prefix>/<node>/<camera>/snapshot`` | the latest event snapshot (JPEG) | yes |
| ``<prefix>/<node>/<camera>/<label>/active`` | ``ON`` while an event of that label is active | yes |
| ``<prefix>/<node>/<camera>/stats`` | fps and latency over the last interval (JSON) | yes |
| ``<discovery>/<component>/<node>_<entity>/<object>/config`` | a Home Assistant entity (JSON) | yes |
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def camera_status(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/status"

    def detections(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/detections"

    def events(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/events"

    def snapshot(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/snapshot"

    def active(self, camera: str, label: str) -> str:
        _check_name("camera name", camera)
        _check_name("label", label)
        return f"{self.prefix}/{self.node}/{camera}/{label}/active"

    def stats(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/stats"

    def discovery(self, discovery_prefix: str, component: str, entity: str, object_id: str) -> str:
        """Home Assistant's ``<discovery_prefix>/<component>/<node id>/<object id>/config``, with node
        id ``<node>_<entity>`` (``entity``: a camera, or a camera and a label id)."""
        _check_name("Home Assistant discovery prefix", discovery_prefix, levels=True)
        for what, value in (("component", component), ("entity", entity), ("object id", object_id)):
            _check_name(f"Home Assistant {what}", value)
        return f"{discovery_prefix}/{component}/{self.node}_{entity}/{object_id}/config"
