"""Tests for edgedet.homeassistant: discovery payloads against HA's documented schema, label ids,
stats, and the discovery state kept in line with config reloads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgedet.config import Config, parse_config
from edgedet.errors import ConfigError
from edgedet.homeassistant import (
    MAX_SAMPLES,
    CameraStats,
    DiscoveryConfig,
    HomeAssistant,
    discovery_configs,
    discovery_labels,
    label_device_class,
    label_ids,
    stats_payload,
)
from edgedet.outputs.topics import Topics
from edgedet.reload import plan

# --------------------------------------------------------------------------- HA's documented schema
#
# Written down from the MQTT binary sensor / sensor pages (home-assistant.io/integrations/
# binary_sensor.mqtt/, /sensor.mqtt/) and the discovery section of /integrations/mqtt/:
# - state_topic is required for both; every other key is optional; full names (abbreviations
#   such as stat_t / uniq_id / dev / o are allowed by HA but not needed, and not used here).
# - availability (a list of {topic, payload_available, payload_not_available, value_template})
#   must not be combined with availability_topic; availability_mode is all / any / latest.
# - device needs identifiers or connections; origin needs name.
# - object_id is deprecated since HA 2025.10 (removed in 2026.4): default_entity_id
#   (``<domain>.<object id>``) replaces it.
# - sensor: when entity_category is set it must be diagnostic; state_class is measurement,
#   measurement_angle, total or total_increasing.
# - discovery topic: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, node_id and
#   object_id from [a-zA-Z0-9_-].

_STRING = {"type": "string"}
_TOPIC = {"type": "string", "minLength": 1, "not": {"pattern": r"[+#]|^/|/$|//"}}
_TEMPLATE = {"type": "string", "pattern": r"\{\{.*\}\}"}

DEVICE_SCHEMA = {
    "type": "object",
    "properties": {
        "configuration_url": _STRING,
        "connections": {"type": "array", "items": {"type": "array", "items": _STRING, "minItems": 2,
                                                   "maxItems": 2}},
        "hw_version": _STRING,
        "identifiers": {"type": "array", "items": _STRING, "minItems": 1},
        "manufacturer": _STRING,
        "model": _STRING,
        "model_id": _STRING,
        "name": _STRING,
        "serial_number": _STRING,
        "suggested_area": _STRING,
        "sw_version": _STRING,
        "via_device": _STRING,
    },
    "additionalProperties": False,
    "anyOf": [{"required": ["identifiers"]}, {"required": ["connections"]}],
}
ORIGIN_SCHEMA = {
    "type": "object",
    "properties": {"name": _STRING, "sw_version": _STRING, "support_url": _STRING},
    "required": ["name"],
    "additionalProperties": False,
}
AVAILABILITY_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "properties": {"topic": _TOPIC, "payload_available": _STRING, "payload_not_available": _STRING,
                       "value_template": _TEMPLATE},
        "required": ["topic"],
        "additionalProperties": False,
    },
}
COMMON = {
    "availability": AVAILABILITY_SCHEMA,
    "availability_mode": {"enum": ["all", "any", "latest"]},
    "availability_template": _TEMPLATE,
    "availability_topic": _TOPIC,
    "default_entity_id": _STRING,
    "device": DEVICE_SCHEMA,
    "device_class": _STRING,
    "enabled_by_default": {"type": "boolean"},
    "encoding": _STRING,
    "entity_category": {"enum": ["config", "diagnostic"]},
    "entity_picture": _STRING,
    "expire_after": {"type": "integer", "minimum": 0},
    "force_update": {"type": "boolean"},
    "icon": _STRING,
    "json_attributes_template": _TEMPLATE,
    "json_attributes_topic": _TOPIC,
    "name": {"type": ["string", "null"]},
    "origin": ORIGIN_SCHEMA,
    "payload_available": _STRING,
    "payload_not_available": _STRING,
    "qos": {"enum": [0, 1, 2]},
    "state_topic": _TOPIC,
    "unique_id": {"type": "string", "minLength": 1},
    "value_template": _TEMPLATE,
}
BINARY_SENSOR_DEVICE_CLASSES = [
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas",
    "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power",
    "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
]
SENSOR_DEVICE_CLASSES = [  # the ones that fit a number in ms or fps, plus none
    "duration", "frequency", "data_rate",
]


def _component_schema(component: str, extra: dict[str, Any], device_classes: list[str]) -> dict[str, Any]:
    props = {**COMMON, **extra, "device_class": {"enum": device_classes}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": ["state_topic"],
        "additionalProperties": False,
        "not": {"required": ["availability", "availability_topic"]},
        "allOf": [{"properties": {"default_entity_id": {"pattern": rf"^{component}\.[a-z0-9_]+$"}}}],
    }


BINARY_SENSOR_SCHEMA = _component_schema("binary_sensor", {
    "off_delay": {"type": "integer", "minimum": 0},
    "payload_off": _STRING,
    "payload_on": _STRING,
}, BINARY_SENSOR_DEVICE_CLASSES)
SENSOR_SCHEMA = _component_schema("sensor", {
    "entity_category": {"const": "diagnostic"},
    "last_reset_value_template": _TEMPLATE,
    "options": {"type": "array", "items": _STRING, "minItems": 1},
    "state_class": {"enum": ["measurement", "measurement_angle", "total", "total_increasing"]},
    "suggested_display_precision": {"type": "integer", "minimum": 0},
    "unit_of_measurement": {"type": ["string", "null"]},
}, SENSOR_DEVICE_CLASSES)
SCHEMAS = {"binary_sensor": BINARY_SENSOR_SCHEMA, "sensor": SENSOR_SCHEMA}
DISCOVERY_TOPIC_RE = re.compile(
    r"(?P<prefix>.+)/(?P<component>binary_sensor|sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config")
ABBREVIATIONS = {"stat_t", "uniq_id", "dev", "o", "avty", "avty_t", "pl_on", "pl_off", "val_tpl", "unit_of_meas",
                 "dev_cla", "stat_cla", "ent_cat", "obj_id", "def_ent_id"}


def configs(**kwargs: Any) -> list[DiscoveryConfig]:
    args: dict[str, Any] = {"node": "dock", "topic_prefix": "edgedet", "cameras": ["gate"], "labels": ["Normal"]}
    args.update(kwargs)
    topics = Topics(args.pop("topic_prefix"), args.pop("node"))
    return discovery_configs(topics=topics, **args)


CASES = {
    "one camera": {},
    "two cameras, coco-like labels": {"cameras": ["gate", "front-door_2"],
                                      "labels": ["person", "traffic light", "smoke", "fire hydrant"]},
    "events off": {"events": False},
    "multi-level prefixes": {"topic_prefix": "site/line-1/edgedet", "discovery_prefix": "ha/disc"},
    "no labels": {"labels": []},
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_every_payload_matches_the_documented_schema(kwargs: dict[str, Any]) -> None:
    out = configs(**kwargs)
    assert out
    for item in out:
        m = DISCOVERY_TOPIC_RE.fullmatch(item.topic)
        assert m is not None, item.topic
        assert m["prefix"] == kwargs.get("discovery_prefix", "homeassistant")
        assert m["component"] == item.component
        decoded = json.loads(item.payload())  # JSON-serialisable, UTF-8
        assert decoded == item.config
        jsonschema.validate(decoded, SCHEMAS[item.component])
        assert not ABBREVIATIONS & decoded.keys()
        assert "object_id" not in decoded  # deprecated by HA 2025.10
        assert decoded["device"]["identifiers"] == ["edgedet_dock"]
        assert (decoded["device"]["model"], decoded["device"]["manufacturer"]) == ("edgedet", "edgedet")
        assert decoded["origin"]["name"] == "edgedet"
    topics = [c.topic for c in out]
    ids = [c.config["unique_id"] for c in out]
    entity_ids = [c.config["default_entity_id"] for c in out]
    assert len(set(topics)) == len(topics) and len(set(ids)) == len(ids) and len(set(entity_ids)) == len(ids)


MUTATIONS = {
    "no state_topic": lambda c: c.pop("state_topic"),
    "abbreviation": lambda c: c.update(stat_t="x/y"),
    "deprecated object_id": lambda c: c.update(object_id="x"),
    "availability twice": lambda c: c.update(availability_topic="x/y"),
    "wildcard state topic": lambda c: c.update(state_topic="x/+/y"),
    "device without identifiers": lambda c: c.update(device={"name": "x"}),
    "origin without name": lambda c: c.update(origin={"sw_version": "1"}),
    "unknown device class": lambda c: c.update(device_class="person"),
    "entity id of another domain": lambda c: c.update(default_entity_id="light.x"),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_the_schema_rejects_what_ha_rejects(mutate: Any) -> None:
    item = next(c for c in configs() if c.component == "binary_sensor")
    config = json.loads(item.payload())
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMAS[item.component])


def test_entities_of_one_camera() -> None:
    by_topic = {c.topic: c.config for c in configs()}
    assert sorted(by_topic) == [
        "homeassistant/binary_sensor/dock_gate/status/config",
        "homeassistant/binary_sensor/dock_gate_normal/active/config",
        "homeassistant/sensor/dock_gate/fps/config",
        "homeassistant/sensor/dock_gate/latency_p50/config",
        "homeassistant/sensor/dock_gate/latency_p95/config",
        "homeassistant/sensor/dock_gate/profile/config",
    ]
    assert by_topic["homeassistant/sensor/dock_gate/profile/config"]["state_topic"] == "edgedet/dock/gate/profile"
    label = by_topic["homeassistant/binary_sensor/dock_gate_normal/active/config"]
    assert {k: label[k] for k in ("state_topic", "payload_on", "payload_off", "unique_id", "default_entity_id")} == {
        "state_topic": "edgedet/dock/gate/Normal/active", "payload_on": "ON", "payload_off": "OFF",
        "unique_id": "edgedet_dock_gate_normal_active",
        "default_entity_id": "binary_sensor.edgedet_dock_gate_normal_active",
    }
    status = by_topic["homeassistant/binary_sensor/dock_gate/status/config"]
    assert (status["state_topic"], status["payload_on"], status["payload_off"], status["device_class"]) == (
        "edgedet/dock/gate/status", "online", "offline", "connectivity")
    fps = by_topic["homeassistant/sensor/dock_gate/fps/config"]
    assert (fps["state_topic"], fps["value_template"], fps["unit_of_measurement"], fps["state_class"]) == (
        "edgedet/dock/gate/stats", "{{ value_json.fps }}", "fps", "measurement")
    p95 = by_topic["homeassistant/sensor/dock_gate/latency_p95/config"]
    assert (p95["value_template"], p95["unit_of_measurement"], p95["device_class"]) == (
        "{{ value_json.latency_ms_p95 }}", "ms", "duration")
    for config in by_topic.values():
        assert config["availability"] == [{
            "topic": "edgedet/dock/status", "payload_available": "online", "payload_not_available": "offline",
            "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
        }]


def test_output_is_stable() -> None:
    assert [c.payload() for c in configs()] == [c.payload() for c in configs()]


@pytest.mark.parametrize(("value", "expected"), [("online", "online"), ("offline", "offline"),
                                                 ("stopped", "offline"), ("", "offline")])
def test_availability_template_maps_stopped_to_unavailable(value: str, expected: str) -> None:
    jinja2 = pytest.importorskip("jinja2")  # HA renders templates with Jinja2
    template = configs()[0].config["availability"][0]["value_template"]
    assert jinja2.Template(template).render(value=value) == expected


def test_value_templates_render_the_stats_message() -> None:
    jinja2 = pytest.importorskip("jinja2")
    stats = stats_payload(50, 10.0, [0.1, 0.2, 0.3])
    rendered = {c.topic.split("/")[-2]: jinja2.Template(c.config["value_template"]).render(value_json=stats)
                for c in configs() if c.component == "sensor" and "value_template" in c.config}
    assert rendered == {"fps": "5.0", "latency_p50": "200.0", "latency_p95": "300.0"}
    empty = stats_payload(0, 10.0, [])
    none = jinja2.Template("{{ value_json.latency_ms_p50 }}").render(value_json=empty)
    assert none == "None"  # HA's PAYLOAD_NONE: a numeric sensor becomes "unknown"


def test_events_off_leaves_out_the_label_sensors() -> None:
    assert all("/active/" not in c.topic for c in configs(events=False))


def test_labels_that_cannot_be_a_topic_level_get_a_safe_one() -> None:
    """Issue 10 item 12: '/', '+', '#' labels get the same safe level as the events stage uses (before:
    skipped, with no entity)."""
    out = configs(labels=["ok", "a/b", "c+d", ""])
    states = [c.config["state_topic"] for c in out if "/active/" in c.topic]
    topics = Topics("edgedet", "dock")
    assert states == [topics.active("gate", label) for label in ["ok", "a/b", "c+d", ""]]
    assert states[:2] == ["edgedet/dock/gate/ok/active", "edgedet/dock/gate/a_b_07f4401c/active"]
    assert all(not any(c in s.split("/")[3] for c in "/+#") for s in states)


def test_clashing_names_keep_the_first_entity(caplog: pytest.LogCaptureFixture) -> None:
    out = configs(cameras=["a", "a_b"], labels=["b_x", "x"])  # a/"b_x" and a_b/"x" share a topic
    topics = [c.topic for c in out]
    assert topics.count("homeassistant/binary_sensor/dock_a_b_x/active/config") == 1
    assert "clashes with another entity" in caplog.text


@pytest.mark.parametrize(("labels", "expected"), [
    (["Normal", "Fall"], {"Normal": "normal", "Fall": "fall"}),
    (["traffic light", "cell phone"], {"traffic light": "traffic_light", "cell phone": "cell_phone"}),
    (["a b", "a_b", "c"], {"a b": r"a_b_[0-9a-f]{8}", "a_b": r"a_b_[0-9a-f]{8}", "c": "c"}),
    (["???"], {"???": r"label_[0-9a-f]{8}"}),
    (["x", "x"], {"x": "x"}),
])
def test_label_ids(labels: list[str], expected: dict[str, str]) -> None:
    got = label_ids(labels)
    assert set(got) == set(expected)
    for label, pattern in expected.items():
        assert re.fullmatch(pattern, got[label]), (label, got[label])
    assert len(set(got.values())) == len(got)
    assert label_ids(reversed(labels)) == got  # stable: does not depend on the order


@pytest.mark.parametrize(("names", "classes", "expected"), [
    (("person", "car", "dog"), None, ("person", "car", "dog")),
    (("person", "car", "dog"), ["dog", "person"], ("person", "dog")),
    (("person", "car", "dog"), [1], ("car",)),
    (("person", "car", "dog"), ["dog", 0, "unknown", 7], ("person", "dog")),
    ((), None, ()),
])
def test_discovery_labels(names: tuple[str, ...], classes: list[str | int] | None,
                          expected: tuple[str, ...]) -> None:
    assert discovery_labels(names, classes) == expected


@pytest.mark.parametrize(("label", "device_class"), [
    ("person", "occupancy"), ("Person", "occupancy"), ("smoke", "smoke"), ("fire", "heat"), ("Fall", "safety"),
    ("car", "motion"), ("Normal", "motion"),
])
def test_label_device_class(label: str, device_class: str) -> None:
    assert label_device_class(label) == device_class


# --------------------------------------------------------------------------- stats


@pytest.mark.parametrize(("frames", "elapsed", "latencies", "expected"), [
    (0, 10.0, [], {"fps": 0.0, "latency_ms_p50": None, "latency_ms_p95": None, "frames": 0, "interval_s": 10.0}),
    (3, 10.0, [0.3, 0.1, 0.2], {"fps": 0.3, "latency_ms_p50": 200.0, "latency_ms_p95": 300.0, "frames": 3,
                                "interval_s": 10.0}),
    (20, 4.0, [i / 100 for i in range(1, 21)], {"fps": 5.0, "latency_ms_p50": 100.0, "latency_ms_p95": 190.0,
                                                "frames": 20, "interval_s": 4.0}),
    (1, 0.0, [0.05], {"fps": 0.0, "latency_ms_p50": 50.0, "latency_ms_p95": 50.0, "frames": 1, "interval_s": 0.0}),
])
def test_stats_payload(frames: int, elapsed: float, latencies: list[float], expected: dict[str, Any]) -> None:
    assert stats_payload(frames, elapsed, latencies) == expected


class FakePublisher:
    """Records set_retained calls and keeps what a broker would retain."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | str | None]] = []
        self.retained: dict[str, bytes | str] = {}

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        assert "+" not in topic and "#" not in topic
        self.calls.append((topic, payload))
        if payload is None:
            self.retained.pop(topic, None)
        else:
            self.retained[topic] = payload

    def take(self) -> list[tuple[str, bytes | str | None]]:
        calls, self.calls = self.calls, []
        return calls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_camera_stats_publish_every_interval() -> None:
    pub, clock = FakePublisher(), Clock()
    stats = CameraStats(pub, Topics("edgedet", "dock"), interval_s=10.0, clock=clock)
    stats.set_cameras(["a", "b"])
    for _ in range(20):
        stats.observe("a", 0.2)
    stats.observe("zzz", 0.1)  # not a camera of the set: ignored
    clock.now += 9.9
    assert not stats.tick() and pub.take() == []
    clock.now += 0.1
    assert stats.tick()
    got = {t: json.loads(p) for t, p in pub.take() if p is not None}
    assert got == {
        "edgedet/dock/a/stats": {"fps": 2.0, "latency_ms_p50": 200.0, "latency_ms_p95": 200.0, "frames": 20,
                                 "interval_s": 10.0},
        "edgedet/dock/b/stats": {"fps": 0.0, "latency_ms_p50": None, "latency_ms_p95": None, "frames": 0,
                                 "interval_s": 10.0},
    }
    clock.now += 5.0
    assert not stats.tick()  # the window restarted
    stats.set_cameras(["b"])
    assert pub.take() == [("edgedet/dock/a/stats", None)]
    assert stats.cameras == ["b"]


def test_camera_stats_bound_their_samples() -> None:
    pub, clock = FakePublisher(), Clock()
    stats = CameraStats(pub, Topics("x", "n"), interval_s=1.0, clock=clock)
    stats.set_cameras(["a"])
    for _ in range(MAX_SAMPLES + 5):
        stats.observe("a", 0.01)
    clock.now += 1.0
    stats.tick()
    (topic, payload), = pub.take()
    assert topic == "x/n/a/stats" and payload is not None and json.loads(payload)["frames"] == MAX_SAMPLES + 5


def test_camera_stats_reject_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        CameraStats(FakePublisher(), Topics("x", "n"), interval_s=0)


# --------------------------------------------------------------------------- config and reloads


def make_config(tmp_path: Path, extra: str = "", cameras: tuple[str, ...] = ("gate",)) -> Config:
    cams = "".join(f"  {c}:\n    url: rtsp://cam.local/{c}\n" for c in cameras)
    text = f"node_id: dock\ncameras:\n{cams}model:\n  path: m.torchscript\n{extra}"
    return parse_config(text, "config.yaml", tmp_path, check_files=False)


ON = "homeassistant:\n  discovery: true\n"


def configure(ha: HomeAssistant, cfg: Config, cameras: list[str], names: tuple[str, ...] | None = None) -> None:
    """As the daemon does at start and after every reload."""
    ha.configure(cfg.homeassistant, cameras, names, classes=cfg.model.classes, events_enabled=cfg.events.enabled)


def test_config_section_defaults_and_errors(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert (cfg.homeassistant.discovery, cfg.homeassistant.prefix) == (False, "homeassistant")
    cfg = make_config(tmp_path, "homeassistant: {discovery: true, prefix: ha/disc}\n")
    assert (cfg.homeassistant.discovery, cfg.homeassistant.prefix) == (True, "ha/disc")
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, "homeassistant: {discovery: yes please, prefix: 'ha/#', discover: true}\n")
    text = str(err.value)
    assert "homeassistant.discovery: expected true or false (got 'yes please')" in text
    assert "homeassistant.prefix: must not contain '+' or '#' (got 'ha/#')" in text
    assert "homeassistant.discover: unknown key 'discover' (did you mean 'discovery'?)" in text


def test_reload_plan_reports_a_discovery_change(tmp_path: Path) -> None:
    change = plan(make_config(tmp_path), make_config(tmp_path, ON))
    assert change.homeassistant and not change.empty and change.ignored == ()
    assert change.summary() == "Home Assistant discovery updated"


def test_discovery_off_publishes_nothing(tmp_path: Path) -> None:
    pub = FakePublisher()
    ha = HomeAssistant(pub, Topics("edgedet", "dock"), clock=Clock())
    configure(ha, make_config(tmp_path), ["gate"], ("Normal", "Fall"))
    ha.observe("gate", 0.1)
    assert pub.calls == [] and ha.topics == [] and ha.stats.cameras == []


def test_configure_follows_reloads(tmp_path: Path) -> None:
    pub = FakePublisher()
    ha = HomeAssistant(pub, Topics("edgedet", "dock"), clock=Clock(), version="1.2.3")
    one = make_config(tmp_path, ON)
    configure(ha, one, ["gate"], ("Normal", "Fall"))
    first = pub.take()
    configs_sent = {t: json.loads(p) for t, p in first if t.endswith("/config") and p is not None}
    assert len(configs_sent) == 7 and all(c["device"]["sw_version"] == "1.2.3" for c in configs_sent.values())
    states = [(t, p) for t, p in first if not t.endswith("/config")]
    assert states == [("edgedet/dock/gate/Normal/active", "OFF"), ("edgedet/dock/gate/Fall/active", "OFF")]

    configure(ha, one, ["gate"])  # nothing changed: nothing sent
    assert pub.take() == []

    two = make_config(tmp_path, ON, cameras=("gate", "yard"))
    configure(ha, two, ["gate", "yard"])
    sent = pub.take()
    assert all("/dock_yard" in t or t.startswith("edgedet/dock/yard/") for t, _ in sent)
    assert ("edgedet/dock/yard/Fall/active", "OFF") in sent and len(sent) == 9

    configure(ha, make_config(tmp_path, ON, cameras=("yard",)), ["yard"])  # gate removed
    sent = pub.take()
    assert {p for _, p in sent} == {None}
    assert {t for t, _ in sent} == {t for t in configs_sent} | {"edgedet/dock/gate/stats"}

    limited = parse_config(
        "node_id: dock\ncameras:\n  yard:\n    url: rtsp://cam.local/yard\nmodel:\n  path: m.torchscript\n"
        "  classes: [Fall]\nhomeassistant: {discovery: true, prefix: ha}\n", "c.yaml", tmp_path, check_files=False)
    configure(ha, limited, ["yard"], ("Normal", "Fall"))  # new prefix, one label left
    sent = pub.take()
    cleared = [t for t, p in sent if p is None]
    published = [t for t, p in sent if p is not None]
    assert len(cleared) == 7 and all(t.startswith("homeassistant/") for t in cleared)
    assert sorted(published) == [
        "ha/binary_sensor/dock_yard/status/config", "ha/binary_sensor/dock_yard_fall/active/config",
        "ha/sensor/dock_yard/fps/config", "ha/sensor/dock_yard/latency_p50/config",
        "ha/sensor/dock_yard/latency_p95/config", "ha/sensor/dock_yard/profile/config",
    ]

    configure(ha, make_config(tmp_path, cameras=("yard",)), ["yard"])  # discovery switched off
    sent = pub.take()
    assert {p for _, p in sent} == {None} and len(sent) == 7  # 6 configs + the stats topic
    assert not any(t.endswith("/config") for t in pub.retained)
    assert ha.stats.cameras == []
