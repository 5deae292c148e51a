"""Home Assistant discovery from the daemon against a real mosquitto: retained configs for a late
subscriber, the stats topic, configs back after a broker restart that lost every retained
message, and configs withdrawn when discovery is switched off by a reload."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.daemoncfg import write_config
from tests.helpers import Message, run_daemon, stop_daemon, tail, wait_for
from tests.integration.test_reload import small_clip
from tests.unit.test_homeassistant import SCHEMAS

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE = "testnode"
BASE = f"edgedet/{NODE}"
EXPECTED = {  # the model's labels are Normal and Fall
    "homeassistant/binary_sensor/testnode_cam/status/config",
    "homeassistant/binary_sensor/testnode_cam_normal/active/config",
    "homeassistant/binary_sensor/testnode_cam_fall/active/config",
    "homeassistant/sensor/testnode_cam/fps/config",
    "homeassistant/sensor/testnode_cam/latency_p50/config",
    "homeassistant/sensor/testnode_cam/latency_p95/config",
    "homeassistant/sensor/testnode_cam/profile/config",
}


def configs(messages: list[Message]) -> dict[str, dict[str, Any]]:
    """The latest non-empty discovery config per topic."""
    out: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.topic.startswith("homeassistant/") and m.payload:
            out[m.topic] = json.loads(m.payload)
    return out


def test_discovery_configs_stats_and_broker_restart(tmp_path: Path, mosquitto: Any, mqtt_sub: Any,
                                                    assets: Any) -> None:
    clip = small_clip(tmp_path, assets.frames)
    cams = {"cam": {"url": str(clip), "loop": True}}
    path, mport = write_config(tmp_path, cams, mosquitto.port, homeassistant={"discovery": True})
    status = mqtt_sub(mosquitto, f"{BASE}/#")
    proc = run_daemon(path)

    def fail(exc: Exception) -> AssertionError:
        return AssertionError(f"{exc}\n{tail(proc.output())}")

    try:
        try:
            status.wait_message(f"{BASE}/status", b"online", timeout=120)
        except TimeoutError as exc:
            raise fail(exc) from None

        # A late subscriber gets every config, retained, valid against HA's documented schema.
        first = mqtt_sub(mosquitto, "homeassistant/#")  # may see them live, as they are published
        first.wait_for(lambda m: EXPECTED <= configs(m).keys() and m, 10, "the discovery configs")
        late = mqtt_sub(mosquitto, "homeassistant/#")  # subscribes after: only retained copies
        got = late.wait_for(lambda m: EXPECTED <= configs(m).keys() and m, 10, "the retained discovery configs")
        assert {m.topic for m in got} == EXPECTED and all(m.retain for m in got)
        for topic, config in configs(got).items():
            jsonschema.validate(config, SCHEMAS[topic.split("/")[1]])
            assert config["device"]["identifiers"] == [f"edgedet_{NODE}"]
            assert config["availability"][0]["topic"] == f"{BASE}/status"
        states = mqtt_sub(mosquitto, f"{BASE}/cam/+/active")  # initial OFF (or ON once an event started)
        states.wait_for(lambda m: {x.topic for x in m} == {f"{BASE}/cam/Normal/active", f"{BASE}/cam/Fall/active"},
                        10, "both label states")

        # The stats topic every 10 s, from the frames the daemon finished.
        try:
            msg = status.wait_message(f"{BASE}/cam/stats", timeout=40)
        except TimeoutError as exc:
            raise fail(exc) from None
        stats = json.loads(msg.payload)
        assert set(stats) == {"fps", "latency_ms_p50", "latency_ms_p95", "frames", "interval_s"}
        assert stats["frames"] > 0 and stats["fps"] > 0, stats
        assert 0 < stats["latency_ms_p50"] <= stats["latency_ms_p95"], stats

        # Broker restart that loses every retained message: the daemon sends the configs again.
        mosquitto.stop()
        saved = list(mosquitto.data_dir.glob("*.db"))
        assert saved, "the fixture broker persists retained messages: its file must be deleted"
        for db in saved:
            db.unlink()
        mosquitto.start()
        after = mqtt_sub(mosquitto, "homeassistant/#")
        try:
            after.wait_for(lambda m: EXPECTED <= configs(m).keys(), 30, "the configs after the broker restart")
        except TimeoutError as exc:
            raise fail(exc) from None
        assert configs(after.messages()) == configs(got)
        assert proc.output().count("connected to MQTT broker") == 2

        # Discovery switched off by a reload: every config is withdrawn (empty retained message).
        write_config(tmp_path, cams, mosquitto.port, metrics_port=mport)
        proc.send_signal(signal.SIGHUP)
        try:
            wait_for(lambda: "config reloaded: Home Assistant discovery updated" in proc.output(), 30,
                     "the reload")
            after.wait_for(lambda m: {x.topic for x in m if not x.payload} == EXPECTED, 10, "empty configs")
        except TimeoutError as exc:
            raise fail(exc) from None
    finally:
        code = stop_daemon(proc, timeout=15)
    assert code == 0, tail(proc.output())
    assert "Traceback" not in proc.output()
