"""Config reload (SIGHUP) against a running daemon: one daemon per test, several reloads, each
checked on the log and on MQTT. Cameras are small looping clips so that two of them fit the
inference budget of a CPU-only box."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.daemoncfg import write_config
from tests.helpers import (
    DaemonProcess,
    Message,
    MqttSubscriber,
    metrics_text,
    mqtt_publish,
    parse_metric,
    run_daemon,
    stop_daemon,
    tail,
    wait_for,
)
from tests.paths import DEMO_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NODE = "testnode"
BASE = f"edgedet/{NODE}"
START_S = 120.0  # model load + first frames on a loaded CI box
STEP_S = 60.0  # one reload and a few frames


# --------------------------------------------------------------------------- helpers


def small_clip(tmp_path: Path, frames_dir: Path, name: str = "clip.mp4") -> Path:
    """A 640x360, 5 fps clip of 20 frames with people in every frame (cheap to decode, loops)."""
    path = tmp_path / name
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 5, (640, 360))
    for jpg in sorted(frames_dir.glob("*.jpg"))[:100:5]:
        image = cv2.imread(str(jpg))
        assert image is not None, jpg
        writer.write(cv2.resize(image, (640, 360)))
    writer.release()
    return path


def seqs(messages: list[Message], camera: str, since: float = 0.0) -> list[int]:
    """``seq`` of the detection messages of ``camera`` that arrived at or after ``since``."""
    topic = f"{BASE}/{camera}/detections"
    return [json.loads(m.payload)["seq"] for m in messages if m.topic == topic and m.time >= since]


def events_of(messages: list[Message], camera: str, since: float = 0.0) -> list[str]:
    topic = f"{BASE}/{camera}/events"
    return [json.loads(m.payload)["type"] for m in messages if m.topic == topic and m.time >= since]


class Daemon:
    """The daemon under test, its config file and the log lines it wrote since a mark."""

    def __init__(self, tmp_path: Path, mqtt_port: int, sub: MqttSubscriber) -> None:
        self.tmp_path = tmp_path
        self.mqtt_port = mqtt_port
        self.sub = sub
        self.metrics_port: int | None = None
        self.proc: DaemonProcess | None = None
        self.path: Path | None = None

    def write(self, cameras: dict[str, dict[str, Any]], **sections: Any) -> None:
        self.path, self.metrics_port = write_config(self.tmp_path, cameras, self.mqtt_port,
                                                    metrics_port=self.metrics_port, **sections)

    def start(self) -> DaemonProcess:
        assert self.path is not None
        self.proc = run_daemon(self.path)
        return self.proc

    @property
    def output(self) -> str:
        assert self.proc is not None
        return self.proc.output()

    def count(self, text: str) -> int:
        return self.output.count(text)

    def reload(self, expect: str) -> float:
        """SIGHUP; wait for the next log line containing ``expect``; return the monotonic time."""
        assert self.proc is not None
        before = self.count(expect)
        self.proc.send_signal(signal.SIGHUP)

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{tail(self.output)}")
            return self.count(expect) > before

        try:
            wait_for(seen, STEP_S, f"log line {expect!r}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{tail(self.output)}") from None
        return time.monotonic()

    def wait(self, predicate: Callable[[list[Message]], Any], what: str, timeout: float = STEP_S) -> Any:
        try:
            return self.sub.wait_for(predicate, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{tail(self.output)}") from None


@pytest.fixture
def clip(tmp_path: Path, assets: Any) -> Path:
    return small_clip(tmp_path, assets.frames)


# --------------------------------------------------------------------------- cameras, events, mqtt


def test_reload_cameras_events_and_mqtt(tmp_path: Path, mosquitto: Any, mqtt_sub: Any, clip: Path) -> None:
    sub = mqtt_sub(mosquitto, f"{BASE}/#")
    d = Daemon(tmp_path, mosquitto.port, sub)
    rules = {"min_score": 0.3, "confirm_frames": 2, "window_frames": 3, "clear_after_s": 60, "update_interval_s": 60}
    events: dict[str, Any] = {"default": rules, "snapshots": {"enabled": False}}
    cam = {"url": str(clip), "loop": True}
    d.write({"a": cam}, mqtt={"publish_empty": True}, events=events)
    proc = d.start()
    try:
        d.wait(lambda m: len(seqs(m, "a")) >= 2, "2 frames of camera a", START_S)

        # 1. add camera b: it starts publishing; a is not restarted.
        d.write({"a": cam, "b": cam}, mqtt={"publish_empty": True}, events=events)
        last_a = max(seqs(sub.messages(), "a"))
        t = d.reload("config reloaded: cameras added: b")
        d.wait(lambda m: len(seqs(m, "b")) >= 2 and len(seqs(m, "a", t)) >= 2, "frames of b and of a")
        after = seqs(sub.messages(), "a", t)
        assert min(after) > last_a, f"camera a restarted: seq {last_a} before, {after} after"
        assert d.count("camera a up") == 1 and d.count("camera b up") == 1
        assert sub.wait_message(f"{BASE}/b/status", b"online").payload == b"online"

        # 2. change camera b (fps_limit): only b restarts; its event tracker starts over too.
        d.wait(lambda m: "new" in events_of(m, "b"), "an event on camera b")
        d.write({"a": cam, "b": {**cam, "fps_limit": 4}}, mqtt={"publish_empty": True}, events=events)
        last_a, last_b = max(seqs(sub.messages(), "a")), max(seqs(sub.messages(), "b"))
        t0 = time.monotonic()
        t = d.reload("config reloaded: cameras restarted: b")
        assert "config reloaded: cameras restarted: b\n" in d.output  # nothing else changed
        d.wait(lambda m: len(seqs(m, "b", t)) >= 2 and len(seqs(m, "a", t)) >= 1, "frames of b and a after")
        assert min(seqs(sub.messages(), "a", t)) > last_a, "camera a must not restart"
        assert min(seqs(sub.messages(), "b", t)) < last_b, "camera b counts from 0 again"
        assert d.count("camera a up") == 1 and d.count("camera b up") == 2
        # Frames of the restarted camera start at seq 0 again: a tracker that kept the old last
        # seq would ignore them. The restart ends b's event and the next frames start a new one.
        # Issue 14: one event per tracked object (the clip shows two people): every active event of b
        # ends first, then new ones start.

        def lifecycle(m: list[Message], since: float, until: float = float("inf")) -> list[tuple[str, str]]:
            topic = f"{BASE}/b/events"
            return [(e["type"], e["id"]) for e in (json.loads(x.payload) for x in m
                    if x.topic == topic and since <= x.time < until)]

        before = lifecycle(sub.messages(), 0.0, t0)
        active = {i for k, i in before if k == "new"} - {i for k, i in before if k == "end"}

        def ended_then_new(m: list[Message]) -> bool:
            after = lifecycle(m, t0)
            ended = {i for k, i in after if k == "end"}
            return active <= ended and any(k == "new" and i not in active for k, i in after)

        d.wait(ended_then_new, "end of b's active events + a new event on b after its restart")

        # 3. remove camera b: it stops publishing, its retained topics are cleared (issue 10 item 12:
        # status, snapshot, stats, <label>/active; before, status stayed "offline"); a goes on.
        d.write({"a": cam}, mqtt={"publish_empty": True}, events=events)
        t = d.reload("config reloaded: cameras removed: b")
        b_at_reload = len(seqs(sub.messages(), "b"))
        d.wait(lambda m: len(seqs(m, "a", t)) >= 3, "3 frames of a after removing b")
        assert len(seqs(sub.messages(), "b")) <= b_at_reload + 1, "b kept publishing"  # one in flight
        assert sub.wait_message(f"{BASE}/b/status", b"", timeout=10).retain is False  # the clear went out
        cleared = {m.topic for m in sub.messages() if m.topic.startswith(f"{BASE}/b/") and m.payload == b""}
        assert {f"{BASE}/b/status", f"{BASE}/b/snapshot", f"{BASE}/b/stats"} <= cleared
        assert any(t.endswith("/active") for t in cleared), cleared  # b had an event: its active topic too
        late = mqtt_sub(mosquitto, f"{BASE}/b/#")  # retained messages arrive before the marker
        mqtt_publish(mosquitto, f"{BASE}/b/zz-marker", b"marker")
        late.wait_message(f"{BASE}/b/zz-marker", timeout=10)
        assert [m.topic for m in late.messages() if m.topic != f"{BASE}/b/zz-marker"] == []
        assert d.count("camera a up") == 1
        assert d.metrics_port is not None
        text = metrics_text(d.metrics_port)  # a removed camera must not look stale or up
        assert parse_metric(text, "edgedet_camera_up", {"camera": "b"}) in (0, None)
        assert parse_metric(text, "edgedet_frame_age_seconds", {"camera": "b"}) is None
        assert parse_metric(text, "edgedet_camera_up", {"camera": "a"}) == 1

        # 4. event thresholds: applied at once, nothing restarts.
        events_strict = {**events, "default": {**events["default"], "min_score": 0.99}}
        d.write({"a": cam}, mqtt={"publish_empty": True}, events=events_strict)
        t = d.reload("config reloaded: event rules updated")
        assert "config reloaded: event rules updated\n" in d.output
        d.wait(lambda m: len(seqs(m, "a", t)) >= 2, "frames of a after the rules changed")
        assert d.count("camera a up") == 1

        # 5. mqtt needs a restart: a warning, nothing else changes, the connection stays.
        d.write({"a": cam}, mqtt={"publish_empty": True, "keepalive": 30}, events=events_strict)
        t = d.reload("config reloaded: no changes")
        assert "config reload: 'mqtt' changed; it takes effect after a restart" in d.output
        d.wait(lambda m: len(seqs(m, "a", t)) >= 2, "frames of a after the mqtt change")
        online = [m for m in sub.messages(f"{BASE}/status") if m.payload == b"online"]
        assert len(online) == 1, "MQTT must not reconnect"
        assert d.count("camera a up") == 1
    finally:
        code = stop_daemon(proc, timeout=15)
    assert code == 0, tail(proc.output())
    assert "Traceback" not in proc.output()
    assert "did not stop within" not in proc.output()


# --------------------------------------------------------------------------- model, invalid configs


def test_reload_model_and_rejected_configs(tmp_path: Path, mosquitto: Any, mqtt_sub: Any, clip: Path) -> None:
    sub = mqtt_sub(mosquitto, f"{BASE}/#")
    d = Daemon(tmp_path, mosquitto.port, sub)
    cams = {"a": {"url": str(clip), "loop": True}}
    d.write(cams, mqtt={"publish_empty": True})
    proc = d.start()
    try:
        d.wait(lambda m: len(seqs(m, "a")) >= 2, "2 frames of camera a", START_S)
        assert d.metrics_port is not None

        # 1. another model file: "model reloaded", MQTT not dropped, detections keep flowing.
        copy = tmp_path / "copy.torchscript"
        shutil.copyfile(DEMO_MODEL, copy)
        d.write(cams, mqtt={"publish_empty": True}, model={"path": str(copy), "conf": 0.3})
        last = max(seqs(sub.messages(), "a"))
        t = d.reload("config reloaded: model reloaded")
        d.wait(lambda m: len(seqs(m, "a", t)) >= 3, "3 frames after the model reload")
        assert min(seqs(sub.messages(), "a", t)) > last, "the camera must not restart"
        online = [m for m in sub.messages(f"{BASE}/status") if m.payload == b"online"]
        assert len(online) == 1, "the node status was re-published: MQTT reconnected"
        assert parse_metric(metrics_text(d.metrics_port), "edgedet_mqtt_connected") == 1
        assert d.count("camera a up") == 1
        assert "did not stop within" not in d.output, "old inference threads kept running"
        assert len(re.findall(r"model \S+ \(", d.output)) == 2  # loaded at start and on reload

        # 2. bad YAML: rejected with the error, the old config keeps running.
        assert d.path is not None
        good = d.path.read_text()
        d.path.write_text(good + "cameras: [\n")
        t = d.reload("config reload rejected")
        line = next(x for x in d.output.splitlines() if "config reload rejected" in x)
        assert "malformed YAML" in line, line
        d.wait(lambda m: len(seqs(m, "a", t)) >= 2, "frames after the rejected YAML")

        # 3. an unknown key: rejected with the YAML path and a hint.
        d.path.write_text(good + "bogus_key: 1\n")
        t = d.reload("unknown key 'bogus_key'")
        line = next(x for x in d.output.splitlines() if "unknown key 'bogus_key'" in x)
        assert "config reload rejected" in line, line
        d.wait(lambda m: len(seqs(m, "a", t)) >= 2, "frames after the rejected key")
        assert d.count("config reloaded:") == 1
    finally:
        code = stop_daemon(proc, timeout=15)
    assert code == 0, tail(proc.output())
    assert "Traceback" not in proc.output()
