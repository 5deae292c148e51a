"""Config reload (SIGHUP / ``systemctl reload``): what changed between two configs.

``plan(old, new)`` is pure; ``app.py`` applies it: cameras added, removed or changed restart only
those capture threads; event thresholds and zones apply at once; a model (or workers) change
reloads the model and restarts the inference threads without dropping MQTT. Sections that need a
restart (mqtt, metrics, node_id, state_dir, outbox) keep their running values, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgedet.config import Config

RESTART_ONLY = ("node_id", "state_dir", "mqtt", "metrics", "outbox")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    model: bool = False  # model or workers section changed
    events: bool = False  # thresholds, snapshots or any camera's zones/masks changed
    log_level: bool = False
    homeassistant: bool = False  # the homeassistant section changed (applied at once)
    ignored: tuple[str, ...] = field(default=())  # sections that need a restart

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.model or self.events or self.log_level
                    or self.homeassistant)

    def summary(self) -> str:
        parts = []
        for word, names in (("added", self.added), ("removed", self.removed), ("restarted", self.changed)):
            if names:
                parts.append(f"cameras {word}: {', '.join(names)}")
        if self.model:
            parts.append("model reloaded")
        if self.events:
            parts.append("event rules updated")
        if self.log_level:
            parts.append("log level changed")
        if self.homeassistant:
            parts.append("Home Assistant discovery updated")
        return "; ".join(parts) or "no changes"


def _capture_view(cam: object) -> object:
    """The camera settings that need a capture restart (zones/masks apply without one)."""
    from dataclasses import replace

    return replace(cam, zones={}, masks=[])  # type: ignore[type-var]


def plan(old: Config, new: Config) -> ReloadPlan:
    old_cams = {n: c for n, c in old.cameras.items() if c.enabled}
    new_cams = {n: c for n, c in new.cameras.items() if c.enabled}
    added = tuple(n for n in new_cams if n not in old_cams)
    removed = tuple(n for n in old_cams if n not in new_cams)
    changed = tuple(
        n for n in new_cams if n in old_cams and _capture_view(new_cams[n]) != _capture_view(old_cams[n])
    )
    zones_changed = any(
        (c.zones, c.masks) != (old_cams[n].zones, old_cams[n].masks) for n, c in new_cams.items() if n in old_cams
    )
    ignored = tuple(key for key in RESTART_ONLY if getattr(old, key, None) != getattr(new, key, None))
    return ReloadPlan(
        added=added,
        removed=removed,
        changed=changed,
        model=old.model != new.model or old.workers != new.workers,
        events=old.events != new.events or zones_changed,
        log_level=old.log_level != new.log_level,
        homeassistant=old.homeassistant != new.homeassistant,
        ignored=ignored,
    )
