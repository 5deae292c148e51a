"""Tests for edgedet.fleet.state / history and edgedet.outputs.node (pure, no broker)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from edgedet.fleet.history import History
from edgedet.fleet.state import FleetState, parse_topic
from edgedet.outputs.node import NodeAnnouncer
from edgedet.outputs.topics import Topics
from edgedet.schemas import load_schema


@pytest.mark.parametrize(("topic", "expected"), [
    ("edgedet/dock/status", ("dock", None, "status", None)),
    ("edgedet/dock/info", ("dock", None, "info", None)),
    ("edgedet/dock/uplink", ("dock", None, "uplink", None)),
    ("edgedet/dock/gate/stats", ("dock", "gate", "stats", None)),
    ("edgedet/dock/gate/person/active", ("dock", "gate", "active", "person")),
    ("edgedet/dock/gate/detections", None),  # not part of the fleet contract
    ("other/dock/status", None),
    ("edgedet/dock/feedback", None),
])
def test_parse_topic(topic: str, expected: tuple[str, str | None, str, str | None] | None) -> None:
    assert parse_topic("edgedet", topic) == expected


def test_multi_level_prefix() -> None:
    assert parse_topic("site/a/edgedet", "site/a/edgedet/n/gate/status") == ("n", "gate", "status", None)


def test_availability_needs_status_online_and_uplink_not_down() -> None:
    s = FleetState("edgedet")
    ch = s.apply("edgedet/n/status", b"online", True, 1.0)
    assert ch is not None and ch.availability is True
    ch = s.apply("edgedet/n/uplink", b"0", False, 2.0)  # the bridge's Last Will at the centre
    assert ch is not None and ch.availability is False
    assert s.nodes()[0]["online"] is False and s.nodes()[0]["status"] == "online"
    ch = s.apply("edgedet/n/uplink", b"1", False, 3.0)
    assert ch is not None and ch.availability is True
    ch = s.apply("edgedet/n/status", b"stopped", False, 4.0)
    assert ch is not None and ch.availability is False


def test_events_become_active_and_end() -> None:
    s = FleetState("edgedet")
    ev = {"type": "new", "id": "e1", "label": "person", "top_score": 0.9}
    ch = s.apply("edgedet/n/gate/events", json.dumps(ev).encode(), False, 1.0)
    assert ch is not None and ch.event is not None and ch.event["node"] == "n" and ch.event["camera"] == "gate"
    assert [e["id"] for e in s.active_events()] == ["e1"]
    s.apply("edgedet/n/gate/events", json.dumps({**ev, "type": "end"}).encode(), False, 2.0)
    assert s.active_events() == []


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"type": "new"}', b'{"id": "x", "type": "bogus"}'])
def test_unreadable_events_are_rejected_and_counted(payload: bytes) -> None:
    s = FleetState("edgedet")
    assert s.apply("edgedet/n/gate/events", payload, False, 1.0) is None
    assert s.rejected == 1 and s.active_events() == []


def test_camera_grid_merges_info_cameras_and_stats() -> None:
    s = FleetState("edgedet")
    s.apply("edgedet/n/info", json.dumps({"start_id": "aaa111", "cameras": ["gate", "yard"]}).encode(), True, 1)
    s.apply("edgedet/n/gate/stats", b'{"fps": 4.5, "latency_ms_p50": 100.0, "latency_ms_p95": 150.0}', True, 1)
    s.apply("edgedet/n/gate/person/active", b"ON", True, 1)
    (node,) = s.nodes()
    assert [c["camera"] for c in node["cameras"]] == ["gate", "yard"]
    gate = node["cameras"][0]
    assert (gate["fps"], gate["latency_ms_p50"], gate["active"]) == (4.5, 100.0, ["person"])


def test_alternating_start_ids_flag_a_duplicate_node_but_a_restart_does_not() -> None:
    s = FleetState("edgedet")

    def info(sid: str) -> bytes:
        return json.dumps({"start_id": sid}).encode()

    assert s.apply("edgedet/n/info", info("aaa111"), True, 1) is not None
    ch = s.apply("edgedet/n/info", info("bbb222"), False, 2)  # a restart: a new id
    assert ch is not None and not ch.duplicate and not s.nodes()[0]["duplicate"]
    ch = s.apply("edgedet/n/info", info("bbb222"), False, 3)  # a reconnect: the same id
    assert ch is not None and not ch.duplicate
    ch = s.apply("edgedet/n/info", info("aaa111"), False, 4)  # the old one is back: two processes
    assert ch is not None and ch.duplicate and s.nodes()[0]["duplicate"]


def test_history_keeps_messages_in_order_and_attaches_snapshots(tmp_path: Path) -> None:
    h = History(tmp_path / "fleet.db")
    try:
        for i, kind in enumerate(("new", "update", "end")):
            h.add_event({"type": kind, "id": "e1", "node": "n", "camera": "gate", "label": "person",
                         "start_time": "t", "end_time": None, "top_score": 0.5 + i / 10, "received_at": float(i)})
        assert [m["type"] for m in h.messages("n")] == ["new", "update", "end"]
        assert h.add_snapshot("n", "gate", b"\xff\xd8jpeg", 3.0) == "e1"
        assert h.add_snapshot("n", "other", b"x", 3.0) is None
        (ev,) = h.events("n")
        assert (ev["type"], ev["top_score"], ev["has_snapshot"]) == ("end", 0.7, True)
        assert h.snapshot("n", "e1") == b"\xff\xd8jpeg"
        h.add_availability("n", True, 1.0)
        assert h.availability("n") == [("n", True, 1.0)]
    finally:
        h.close()


class FakePublisher:
    """Records set_retained; delivers published info to the subscriber like a broker would."""

    def __init__(self) -> None:
        self.retained: list[tuple[str, bytes | str | None]] = []
        self.handlers: dict[str, Callable[[str, bytes, bool], None]] = {}

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        self.retained.append((topic, payload))

    def subscribe(self, topic: str, callback: Callable[[str, bytes, bool], None], qos: int = 1) -> None:
        self.handlers[topic] = callback


def test_node_info_matches_its_schema_and_is_retained() -> None:
    pub = FakePublisher()
    node = NodeAnnouncer(pub, Topics("edgedet", "dock"), start_id="abc123def456", clock=lambda: 0.0)
    info = node.announce(model="m.torchscript", backend="torchscript", precision="fp32", cameras=["gate"])
    jsonschema.validate(info, load_schema("node_info"))
    assert pub.retained == [("edgedet/dock/info", json.dumps(info, separators=(",", ":")))]
    assert info["started_at"] == "1970-01-01T00:00:00.000Z" and info["start_id"] == "abc123def456"


def test_a_live_foreign_start_id_is_a_duplicate_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pub = FakePublisher()
    node = NodeAnnouncer(pub, Topics("edgedet", "dock"), start_id="aaaaaa")
    node.announce(model="m", backend="torchscript", precision="fp32", cameras=[])
    handler = pub.handlers["edgedet/dock/info"]
    handler("edgedet/dock/info", json.dumps({"start_id": "old999"}).encode(), True)  # a retained copy: history
    handler("edgedet/dock/info", json.dumps({"start_id": "aaaaaa"}).encode(), False)  # our own echo
    assert node.duplicates == [] and len(pub.retained) == 1
    for _ in range(2):
        handler("edgedet/dock/info", json.dumps({"start_id": "bbbbbb", "version": "9"}).encode(), False)
    assert node.duplicates == ["bbbbbb"]
    errors = [r for r in caplog.records if "DUPLICATE NODE ID" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelname == "ERROR" and "bbbbbb" in errors[0].getMessage()
    assert len(pub.retained) == 2  # our info once more, so that the other process sees us


@pytest.mark.parametrize("name", ["node_info", "stats", "feedback"])
def test_fleet_schemas_are_valid(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema(name))
