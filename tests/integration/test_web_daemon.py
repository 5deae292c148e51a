"""The web console of a real daemon (``edgedet run`` on the demo clip, real mosquitto): the API
answers from the running pipeline, feedback goes out on MQTT and into the dataset, and the event
history with its verdicts survives a restart."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgedet.schemas import load_schema
from tests.helpers import stop_daemon, wait_for
from tests.integration.conftest import NODE, Daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = {
    "default": {"confirm_frames": 3, "window_frames": 5, "min_score": 0.3, "clear_after_s": 1.5,
                "update_interval_s": 1},
    "snapshots": {"enabled": True, "keep": 50, "max_mb": 20},
}
WEB = {"feedback": {"export_dataset": True}}


def api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        body = resp.read()
        return json.loads(body) if resp.headers["content-type"] == "application/json" else (resp.headers, body)


def try_api(port: int, path: str) -> Any:
    try:
        return api(port, path)
    except (urllib.error.URLError, ConnectionError):
        return None


def post(port: int, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_console_api_feedback_and_history_across_a_restart(tmp_path: Path, assets: Any,
                                                          start_daemon: Callable[..., Daemon]) -> None:
    cameras = {"yard": {"url": str(assets.enter_leave), "loop": True, "realtime": True}}
    proc, sub, port = start_daemon(cameras, events=EVENTS, web=WEB)
    status = wait_for(lambda: (s := try_api(port, "/api/v1/status")) and s["model"] and s, 120, "the status")
    assert status["node"] == NODE
    assert status["model"] | {"runtime": None} == {
        "name": "demo", "backend": "torchscript", "runtime": None, "device": "cpu", "precision": "fp32",
        "input_size": [640, 640], "classes": ["Normal", "Fall"]}
    assert status["threads"]["layout"]["workers"] >= 1 and "infer:0" in status["threads"]["names"]
    assert status["disk"]["state_dir"] == str(tmp_path / "state")

    # cameras: up, a frame that changes
    first = wait_for(lambda: (c := api(port, "/api/v1/cameras")) and c[0]["seq"] is not None and c[0], 60, "a frame")
    assert first["name"] == "yard" and first["size"] == [1280, 720]
    wait_for(lambda: api(port, "/api/v1/cameras")[0]["state"] == "up", 30, "camera up")
    headers, jpeg = api(port, "/api/v1/cameras/yard/latest.jpg?h=180")
    assert headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    wait_for(lambda: api(port, "/api/v1/cameras/yard/latest.jpg")[0]["x-frame-seq"] != headers["x-frame-seq"],
             30, "a newer frame")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/cameras/yard/stream.mjpeg", timeout=10) as resp:
        got = b""
        while got.count(b"Content-Type: image/jpeg") < 2:
            got += resp.read1(65536)

    # an event appears when the person does; its snapshot is served
    event = wait_for(lambda: (e := api(port, "/api/v1/events?camera=yard")) and e[0], 90, "an event")
    assert event["label"] == "Normal" and event["camera"] == "yard"
    one = api(port, f"/api/v1/events/{event['id']}")
    assert one["id"] == event["id"] and one["timeline"][0]["type"] == "new"
    wait_for(lambda: api(port, f"/api/v1/events/{event['id']}")["has_frame"], 30, "the event's frame")
    snap_headers, snap = api(port, f"/api/v1/events/{event['id']}/snapshot.jpg")
    assert snap_headers["content-type"] == "image/jpeg" and snap[:2] == b"\xff\xd8"

    # feedback: stored, on MQTT, in the dataset
    session = api(port, "/api/v1/session")
    code, updated = post(port, f"/api/v1/events/{event['id']}/feedback",
                         {"verdict": "false_alarm", "category": "glare", "note": "sun"},
                         {session["write_header"]: session["write_token"]})
    assert code == 200, updated
    assert updated["feedback"]["verdict"] == "false_alarm"
    feedback = sub.wait_for(lambda ms: next((json.loads(m.payload) for m in ms if m.topic.endswith("/yard/events")
                                             and b'"feedback"' in m.payload), None), 10, "the feedback message")
    jsonschema.Draft202012Validator(load_schema("event_feedback")).validate(feedback)
    assert (feedback["id"], feedback["verdict"], feedback["category"]) == (event["id"], "false_alarm", "glare")
    dataset = tmp_path / "state" / "dataset"
    assert updated["dataset"] == str(dataset / "images" / f"{event['id']}.jpg")
    assert (dataset / "labels" / f"{event['id']}.txt").read_text() == ""  # a false alarm: a negative
    assert "names:\n  0: \"Normal\"\n  1: \"Fall\"" in (dataset / "data.yaml").read_text()
    assert stop_daemon(proc) == 0, proc.output()

    # a restart keeps the history and the verdict
    proc2, _, port2 = start_daemon(cameras, events=EVENTS, web=WEB)
    again = wait_for(lambda: try_api(port2, f"/api/v1/events/{event['id']}"), 120, "the event after a restart")
    assert again["feedback"]["verdict"] == "false_alarm" and again["feedback"]["note"] == "sun"
    assert [e["id"] for e in api(port2, "/api/v1/events?verdict=false_alarm")] == [event["id"]]
    assert stop_daemon(proc2) == 0, proc2.output()
    assert "Traceback" not in proc.output() + proc2.output()
