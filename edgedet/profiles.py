"""Day/night profiles: which named set of per-camera overrides is active now.

A camera's profile is chosen by rules, in the order the config lists the profiles; the first
profile whose rule matches wins, and none matching means the camera's base settings:

- ``schedule``: local times ``from``-``to`` (wrapping midnight when ``to`` < ``from``) in the node's
  timezone;
- ``sun``: the sun's elevation at the node's latitude/longitude, computed by ``astral`` (``below``
  / ``above`` degrees: civil dusk is ``below: -6``);
- ``image: ir``: the frames themselves are grey, as a colour camera in IR night mode sends. A cheap
  per-frame statistic (mean colour spread of a small image) with hysteresis: grey below ``grey_below``
  for ``hold_frames`` frames enters, colourful above ``colour_above`` for as many frames leaves.

``ProfileSelector`` is pure: a clock and frames in, a profile name (or None) out; the pipeline
applies the overrides like a reload of those keys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Schedule:
    start: dt.time
    end: dt.time

    def matches(self, local: dt.datetime) -> bool:
        t = local.time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # wraps midnight


@dataclass(frozen=True, slots=True)
class Sun:
    below: float | None = None  # degrees of elevation
    above: float | None = None

    def matches(self, elevation: float) -> bool:
        return (self.below is None or elevation < self.below) and (self.above is None or elevation > self.above)


@dataclass(frozen=True, slots=True)
class IrImage:
    grey_below: float = 3.0  # mean |R-G| + |G-B| of a 64x36 image, grey levels
    colour_above: float = 6.0
    hold_frames: int = 5


Rule = Schedule | Sun | IrImage


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    timezone: str = "UTC"


def colour_spread(image: np.ndarray) -> float:
    """Mean |R-G| + |G-B| over a 64x36 copy: ~0 for an IR (grey) frame, > 10 for a daylight scene."""
    if image.ndim == 2 or image.shape[2] == 1:
        return 0.0
    small = cv2.resize(image[:, :, :3], (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)
    b, g, r = small[:, :, 0], small[:, :, 1], small[:, :, 2]
    return float(np.mean(np.abs(r - g)) + np.mean(np.abs(g - b)))


def sun_elevation(location: Location, when: dt.datetime) -> float:
    from astral import Observer  # the `profiles` extra; imported only when a sun rule is configured
    from astral.sun import elevation

    return float(elevation(Observer(latitude=location.latitude, longitude=location.longitude), when))


class ProfileSelector:
    """The active profile of one camera. ``update(now, image)`` returns (name or None, changed)."""

    def __init__(self, profiles: Sequence[tuple[str, Rule]], location: Location | None = None,
                 elevation: Callable[[Location, dt.datetime], float] = sun_elevation) -> None:
        self.profiles = list(profiles)
        self.location = location
        self._elevation = elevation
        self._zone = ZoneInfo(location.timezone) if location is not None else dt.timezone.utc
        self._grey = False
        self._streak = 0
        self.active: str | None = None
        if any(isinstance(r, Sun) for _, r in self.profiles) and location is None:
            raise ValueError("a sun rule needs the node's location (latitude, longitude)")

    def _ir(self, rule: IrImage, image: np.ndarray | None) -> bool:
        if image is not None:
            spread = colour_spread(image)
            flip = spread > rule.colour_above if self._grey else spread < rule.grey_below
            self._streak = self._streak + 1 if flip else 0
            if self._streak >= rule.hold_frames:
                self._grey, self._streak = not self._grey, 0
        return self._grey

    def update(self, now: dt.datetime, image: np.ndarray | None = None) -> tuple[str | None, bool]:
        local = now.astimezone(self._zone)
        chosen = None
        elevation: float | None = None
        for name, rule in self.profiles:
            if isinstance(rule, Schedule):
                hit = rule.matches(local)
            elif isinstance(rule, Sun):
                assert self.location is not None
                if elevation is None:
                    elevation = self._elevation(self.location, now)
                hit = rule.matches(elevation)
            else:
                hit = self._ir(rule, image)
            if hit and chosen is None:
                chosen = name
        changed = chosen != self.active
        self.active = chosen
        return chosen, changed
