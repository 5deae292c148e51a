"""Config of motion-aware inference (``cameras.<name>.detect``), of profile rules (``profiles.<name>.when``)
and of the node's ``location`` (for sun rules). Sections only: ``edgedet/motion.py`` and
``edgedet/profiles.py`` hold the behaviour, ``edgedet/profile_runner.py`` turns these into it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edgedet.config.builder import Section, YamlValue, meta
from edgedet.config.fields import between
from edgedet.config.problems import INVALID, Bad, Ctx, Mismatch, PathT, show

#: Labels whose growth can be too slow for frame-to-frame motion (a plume): they turn on the
#: long-horizon reference of the motion gate. Labels confirmed by ``confirm: tube`` are added.
SLOW_LABELS = ("smoke", "fire")
_TIME_RE = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DetectConfig(Section):
    """When a camera's frames go to inference. ``always``: every decoded frame (after ``fps_limit``);
    ``motion``: frames with motion (at most one per ``min_interval_s``) and at least one every
    ``max_interval_s`` (the smoke-safe floor); see edgedet/motion.py."""

    mode: Literal["always", "motion"] = "always"
    min_interval_s: float = field(default=0.0, metadata=meta(check=between(0, 60)))
    max_interval_s: float = field(default=10.0, metadata=meta(check=between(0.1, 60)))
    threshold: int = field(default=25, metadata=meta(check=between(1, 254)))  # grey levels
    min_fraction: float = field(default=0.002, metadata=meta(check=between(0, 1)))  # of the image area
    slow_labels: list[str] = field(default_factory=lambda: list(SLOW_LABELS))
    reference_s: float = field(default=120.0, metadata=meta(check=between(1, 3600)))
    slow_fraction: float = field(default=0.003, metadata=meta(check=between(0, 1)))

    def validate(self) -> list[tuple[str, str]]:
        if self.min_interval_s > self.max_interval_s:
            return [("min_interval_s", f"must be <= max_interval_s ({self.max_interval_s:g}) "
                                       f"(got {self.min_interval_s:g})")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class DetectOverrides(Section):
    """A profile's changes to a camera's ``detect`` block; ``None`` keeps the camera's value."""

    mode: Literal["always", "motion"] | None = None
    min_interval_s: float | None = field(default=None, metadata=meta(check=between(0, 60)))
    max_interval_s: float | None = field(default=None, metadata=meta(check=between(0.1, 60)))
    threshold: int | None = field(default=None, metadata=meta(check=between(1, 254)))
    min_fraction: float | None = field(default=None, metadata=meta(check=between(0, 1)))
    slow_labels: list[str] | None = None
    reference_s: float | None = field(default=None, metadata=meta(check=between(1, 3600)))
    slow_fraction: float | None = field(default=None, metadata=meta(check=between(0, 1)))

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        return {k: v for k, v in Section.to_dict(self, masked).items() if v is not None}

    def apply(self, base: DetectConfig) -> DetectConfig:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes)


def _clock_time(value: Any) -> dt.time:
    """``"22:00"`` -> 22:00. YAML 1.1 reads an unquoted ``22:00`` as the base-60 integer 1320; taken back."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return dt.time(value // 60, value % 60)
    if isinstance(value, str):
        match = _TIME_RE.fullmatch(value.strip())
        if match:
            return dt.time(int(match[1]), int(match[2]))
    raise Bad(f"expected a local time \"HH:MM\" (got {show(value)})")


@dataclass(frozen=True, slots=True)
class ScheduleSpec(YamlValue):
    """``{from: "22:00", to: "06:00"}``: local times in ``location.timezone`` (UTC without a location);
    ``to`` before ``from`` wraps midnight."""

    start: dt.time
    end: dt.time

    def to_plain(self) -> dict[str, str]:
        return {"from": self.start.strftime("%H:%M"), "to": self.end.strftime("%H:%M")}

    @classmethod
    def from_yaml(cls, value: Any, path: PathT, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            raise Mismatch('a mapping {from: "HH:MM", to: "HH:MM"}', value)
        out: dict[str, dt.time] = {}
        for key in value:
            if key not in ("from", "to"):
                ctx.add((*path, key), f"unknown key {key!r} (expected 'from' and 'to')", ctx.key_line_of((*path, key)))
        for key in ("from", "to"):
            if key not in value:
                ctx.add(path, f"missing required key {key!r}", ctx.key_line_of(path))
                continue
            try:
                out[key] = _clock_time(value[key])
            except Bad as exc:
                ctx.add((*path, key), str(exc))
        if len(out) < 2 or any(k not in ("from", "to") for k in value):
            return INVALID
        if out["from"] == out["to"]:
            raise Bad("'from' and 'to' are the same time (the schedule would never, or always, match)")
        return cls(out["from"], out["to"])


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SunSpec(Section):
    """The sun's elevation in degrees at ``location``: ``below: -6`` is after civil dusk / before civil dawn."""

    below: float | None = field(default=None, metadata=meta(check=between(-90, 90)))
    above: float | None = field(default=None, metadata=meta(check=between(-90, 90)))

    def validate(self) -> list[tuple[str, str]]:
        if self.below is None and self.above is None:
            return [("below", "a sun rule needs 'below' or 'above' (degrees of elevation, e.g. below: -6)")]
        if self.below is not None and self.above is not None and self.above >= self.below:
            return [("above", f"must be < below ({self.below:g}) (got {self.above:g})")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ProfileWhen(Section):
    """One rule: ``schedule``, ``sun`` or ``image: ir`` (the frames are grey: a colour camera in IR mode)."""

    schedule: ScheduleSpec | None = None
    sun: SunSpec | None = None
    image: Literal["ir"] | None = None
    hold_frames: int = field(default=5, metadata=meta(check=between(1, 1000)))  # image rule hysteresis

    def validate(self) -> list[tuple[str, str]]:
        given = [k for k in ("schedule", "sun", "image") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            return [("schedule" if not given else given[-1], f"give exactly one rule of schedule, sun or image "
                                                             f"(got {got})")]
        return []


def valid_timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        if value != "UTC" and not _have_tz_database():
            return (f"cannot look up time zone {show(value)}: this system has no time zone database "
                    "(apt-get install tzdata, or pip install tzdata)")
        return f"unknown time zone {show(value)} (expected an IANA name such as 'Europe/Paris' or 'UTC')"
    return None


def _have_tz_database() -> bool:
    try:
        ZoneInfo("Europe/Paris")
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class LocationConfig(Section):
    """Where the node stands: sun rules of profiles need it; ``timezone`` is also the zone of schedules."""

    latitude: float = field(metadata=meta(check=between(-90, 90)))
    longitude: float = field(metadata=meta(check=between(-180, 180)))
    timezone: str = field(default="UTC", metadata=meta(check=valid_timezone))

