"""The ``detect``, ``profiles`` and ``location`` keys: defaults, overlays, and one-line errors with YAML lines."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from edgedet.config import parse_config
from edgedet.errors import ConfigError

HEAD = "model: {path: m.torchscript}\ncameras:\n  hill:\n    url: rtsp://cam.local/hill\n"  # camera keys: line 5


def parse(text: str, tmp_path: Path):  # noqa: ANN201
    return parse_config(HEAD + text, "c.yaml", tmp_path, check_files=False)


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return info.value.problems


def test_defaults_are_always_and_no_profiles(tmp_path: Path) -> None:
    cam = parse("", tmp_path).cameras["hill"]
    assert cam.detect.mode == "always" and cam.detect.max_interval_s == 10 and cam.profiles == {}
    assert cam.detect.slow_labels == ["smoke", "fire"] and cam.labels is None
    assert cam.idle_limit_s == cam.stall_timeout_s  # health: no floor to wait for


def test_a_profile_overlays_the_camera(tmp_path: Path) -> None:
    cfg = parse(
        "    fps_limit: 5\n    detect: {mode: motion, min_interval_s: 0.5}\n    profiles:\n"
        "      night:\n        when: {schedule: {from: 22:00, to: '06:30'}}\n"  # unquoted 22:00: YAML's base 60
        "        detect: {max_interval_s: 4}\n        labels: [person]\n        events: {person: {min_score: 0.7}}\n",
        tmp_path)
    cam = cfg.cameras["hill"]
    night = cam.profiles["night"]
    assert night.when.schedule is not None
    assert (night.when.schedule.start, night.when.schedule.end) == (dt.time(22, 0), dt.time(6, 30))
    applied = night.apply(cam)
    assert (applied.detect.mode, applied.detect.min_interval_s, applied.detect.max_interval_s) == ("motion", 0.5, 4)
    assert applied.fps_limit == 5 and applied.labels == ["person"] and applied.zones == cam.zones
    assert night.apply_events(cfg.events).thresholds("person").min_score == 0.7
    assert night.apply_events(cfg.events).thresholds("car").min_score == cfg.events.thresholds("car").min_score
    assert cam.idle_limit_s == cam.stall_timeout_s + 10  # the longest floor of the camera and its profiles


@pytest.mark.parametrize(("text", "expected"), [
    ("    detect: {mode: motoin}\n",
     ["c.yaml:5: cameras.hill.detect.mode: expected one of 'always', 'motion' (got 'motoin')"]),
    ("    detect: {mode: motion, min_interval_s: 20, max_interval_s: 10}\n",
     ["c.yaml:5: cameras.hill.detect.min_interval_s: must be <= max_interval_s (10) (got 20)"]),
    ("    detect: {max_interval_s: 600}\n",
     ["c.yaml:5: cameras.hill.detect.max_interval_s: must be between 0.1 and 60 (got 600.0)"]),
    ("    profiles:\n      night:\n        when: {schedule: {from: '25:00', to: '06:00'}}\n",
     ["c.yaml:7: cameras.hill.profiles.night.when.schedule.from: expected a local time \"HH:MM\" (got '25:00')"]),
    ("    profiles:\n      night:\n        when: {schedule: {from: '06:00', to: '06:00'}}\n",
     ["c.yaml:7: cameras.hill.profiles.night.when.schedule: 'from' and 'to' are the same time (the schedule would "
      "never, or always, match)"]),
    ("    profiles:\n      night:\n        when: {}\n",
     ["c.yaml:7: cameras.hill.profiles.night.when.schedule: give exactly one rule of schedule, sun or image "
      "(got none)"]),
    ("    profiles:\n      night:\n        when: {image: ir, sun: {below: -6}}\n",
     ["c.yaml:7: cameras.hill.profiles.night.when.image: give exactly one rule of schedule, sun or image "
      "(got sun, image)"]),
    ("    profiles:\n      night:\n        when: {image: ir}\n        fps_limt: 1\n",
     ["c.yaml:8: cameras.hill.profiles.night.fps_limt: unknown key 'fps_limt' (did you mean 'fps_limit'?)"]),
    ("    profiles:\n      base:\n        when: {image: ir}\n",
     ["c.yaml:5: cameras.hill.profiles: 'base' names the camera's own settings; give the profile another name"]),
    ("    profiles:\n      night:\n        when:\n          sun: {below: -6}\n",
     ["c.yaml:8: cameras.hill.profiles.night.when.sun: a sun rule needs the node's location: set location: "
      "{latitude: .., longitude: .., timezone: ..} at the top level"]),
    ("location: {latitude: 95, longitude: 6, timezone: Mars/Base}\n",
     ["c.yaml:5: location.latitude: must be between -90 and 90 (got 95.0)",
      "c.yaml:5: location.timezone: unknown time zone 'Mars/Base' (expected an IANA name such as 'Europe/Paris' "
      "or 'UTC')"]),
])
def test_bad_keys_give_one_line_each(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(text, tmp_path) == expected


def test_check_config_exits_2_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    (tmp_path / "m.torchscript").write_bytes(b"model")
    path.write_text(HEAD + "    profiles:\n      night:\n        when: {sun: {below: -6}}\n")
    proc = subprocess.run([sys.executable, "-m", "edgedet", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:7: cameras.hill.profiles.night.when.sun: a sun rule needs the node's location" in proc.stderr


def test_a_config_without_profiles_does_not_import_astral(tmp_path: Path) -> None:
    """The ``profiles`` extra (astral) is imported only when a sun rule is evaluated."""
    code = ("import sys, edgedet.app, edgedet.profile_runner, edgedet.profiles; "
            "print('astral' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_a_system_without_a_time_zone_database_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A minimal Debian (no tzdata package, no tzdata wheel) cannot resolve any zone: say so."""
    import zoneinfo

    for name in ["tzdata", *(m for m in sys.modules if m.startswith("tzdata."))]:
        monkeypatch.setitem(sys.modules, name, None)  # no tzdata wheel either, even if imported before
    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        got = problems("location: {latitude: 45, longitude: 6, timezone: Europe/Paris}\n", tmp_path)
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
    assert got == ["c.yaml:5: location.timezone: cannot look up time zone 'Europe/Paris': this system has no time "
                   "zone database (apt-get install tzdata, or pip install tzdata)"]
