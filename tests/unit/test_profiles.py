"""Profiles with a fake clock across a sunset and a midnight, and the IR test on real frames turned grey."""

from __future__ import annotations

import datetime as dt

import cv2
import pytest

from edgedet.profiles import IrImage, Location, ProfileSelector, Schedule, Sun, colour_spread, sun_elevation
from tests.paths import ultralytics_assets

ALPS = Location(latitude=45.9, longitude=6.1, timezone="Europe/Paris")
UTC = dt.timezone.utc


def at(hour: int, minute: int = 0, day: int = 21, month: int = 6) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_sun_elevation_across_a_sunset() -> None:
    # 21 June 2026 at 45.9 N 6.1 E: sunset near 19:25 UTC, civil dusk (-6 deg) near 20:05 UTC
    assert sun_elevation(ALPS, at(12)) > 60
    assert 0 < sun_elevation(ALPS, at(19, 0)) < 6
    assert -6 < sun_elevation(ALPS, at(19, 40)) < 0
    assert sun_elevation(ALPS, at(20, 30)) < -6


def test_a_sun_rule_switches_at_dusk_and_back_at_dawn() -> None:
    selector = ProfileSelector([("night", Sun(below=-6.0))], ALPS)
    timeline = [selector.update(at(h, m)) for h, m in [(18, 0), (19, 30), (20, 30), (23, 59)]]
    timeline += [selector.update(at(h, m, day=22)) for h, m in [(0, 1), (3, 0), (5, 0)]]
    assert [name for name, _ in timeline] == [None, None, "night", "night", "night", "night", None]
    assert [changed for _, changed in timeline] == [False, False, True, False, False, False, True]


def test_a_schedule_wraps_midnight_in_local_time() -> None:
    selector = ProfileSelector([("night", Schedule(dt.time(22, 0), dt.time(6, 0)))], ALPS)
    # Europe/Paris is UTC+2 in June: 22:00 local = 20:00 UTC
    assert selector.update(at(19, 59))[0] is None
    assert selector.update(at(20, 0)) == ("night", True)
    assert selector.update(at(23, 30)) == ("night", False)  # 01:30 local, past midnight
    assert selector.update(at(3, 59, day=22))[0] == "night"
    assert selector.update(at(4, 0, day=22)) == (None, True)  # 06:00 local


def test_the_first_matching_profile_wins() -> None:
    profiles = [("maintenance", Schedule(dt.time(2, 0), dt.time(3, 0))), ("night", Sun(below=-6.0))]
    selector = ProfileSelector(profiles, ALPS)
    assert selector.update(at(0, 30, day=22))[0] == "maintenance"  # 02:30 local
    assert selector.update(at(1, 30, day=22))[0] == "night"


def test_ir_night_mode_from_real_frames_turned_grey_with_hysteresis() -> None:
    assets = ultralytics_assets()
    if assets is None:
        pytest.skip("the ultralytics wheel (its sample images) is not installed")
    colour = cv2.imread(str(assets / "bus.jpg"))
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert colour_spread(colour) > 10 and colour_spread(grey) < 1
    selector = ProfileSelector([("ir", IrImage(hold_frames=3))])
    now = at(12)
    seen = [selector.update(now, img)[0] for img in [colour] * 3 + [grey] * 2 + [colour] + [grey] * 3]
    assert seen == [None, None, None, None, None, None, None, None, "ir"]  # 3 grey in a row enter
    seen = [selector.update(now, img)[0] for img in [colour, grey, colour, colour, colour]]
    assert seen == ["ir", "ir", "ir", "ir", None]  # 3 colourful in a row leave


def test_a_sun_rule_needs_a_location() -> None:
    with pytest.raises(ValueError, match="location"):
        ProfileSelector([("night", Sun(below=-6.0))])
