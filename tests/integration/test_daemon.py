"""`edgedet run` as a subprocess against a real mosquitto and a real GStreamer RTSP server."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import jsonschema
import pytest

from edgedet.schemas import load_schema
from tests.brokers import healthz
from tests.daemoncfg import frames_clip, write_config
from tests.helpers import (
    Message,
    MqttSubscriber,
    metrics_text,
    parse_metric,
    run_daemon,
    stop_daemon,
    topic_matches,
    wait_for,
)

pytestmark = pytest.mark.integration
NODE = "testnode"


def detections(messages: MqttSubscriber | list[Message], camera: str) -> list[dict]:
    """Detection payloads of ``camera``, from a subscriber or from the list a wait_for predicate gets."""
    topic = f"edgedet/{NODE}/{camera}/detections"
    if isinstance(messages, MqttSubscriber):
        messages = messages.messages(topic)
    return [json.loads(m.payload) for m in messages if topic_matches(topic, m.topic)]


def test_rtsp_camera_end_to_end(mosquitto, rtsp_server, mqtt_sub, start_daemon):
    proc, sub, mport = start_daemon({"gate": {"url": rtsp_server.url, "stall_timeout_s": 10}},
                                    mqtt={"publish_empty": True})
    try:
        sub.wait_for(lambda m: len(detections(m, "gate")) >= 20, timeout=120, what="20 detection messages")
        schema = load_schema("detections")
        msgs = detections(sub, "gate")
        for msg in msgs:
            jsonschema.validate(msg, schema)
        seqs = [m["seq"] for m in msgs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "seq must increase"
        with_person = sum(1 for m in msgs if any(d["label"] == "Normal" for d in m["detections"]))
        assert with_person / len(msgs) >= 0.9, f"persons in {with_person}/{len(msgs)} frames"
        assert all(m["width"] == 1280 and m["height"] == 720 for m in msgs)

        text = metrics_text(mport)
        assert parse_metric(text, "edgedet_frames_processed_total", {"camera": "gate"}) >= 20
        assert parse_metric(text, "edgedet_end_to_end_seconds_count", {"camera": "gate"}) >= 20
        assert parse_metric(text, "edgedet_inference_seconds_count", {"camera": "gate"}) >= 20
        assert parse_metric(text, "edgedet_camera_up", {"camera": "gate"}) == 1
        assert parse_metric(text, "edgedet_mqtt_connected") == 1
        assert parse_metric(text, "edgedet_build_info", {"model": "demo"}) == 1
        status, body = healthz(mport)
        assert status == 200 and body["status"] == "ok", body

        late = mqtt_sub(mosquitto, f"edgedet/{NODE}/status")  # a late subscriber gets the retained state
        assert late.wait_message(f"edgedet/{NODE}/status").payload == b"online"
        assert sub.wait_message(f"edgedet/{NODE}/gate/status", b"online").retain is False  # live copy

        latencies = [m["latency_ms"]["capture_to_publish"] for m in msgs]
        print(f"rtsp: {len(msgs)} msgs, e2e p50 {statistics.median(latencies):.0f} ms "
              f"p95 {sorted(latencies)[int(0.95 * len(latencies)) - 1]:.0f} ms, dropped "
              f"{parse_metric(text, 'edgedet_frames_dropped_total', {'camera': 'gate', 'reason': 'queue_full'})}")
    finally:
        code = stop_daemon(proc, timeout=5)
    assert code == 0, proc.output()
    assert "Traceback" not in proc.output()
    final = mqtt_sub(mosquitto, f"edgedet/{NODE}/status")
    assert final.wait_message(f"edgedet/{NODE}/status").payload == b"stopped"


def test_sigterm_exits_within_5s(assets, start_daemon):
    import signal
    import time

    proc, sub, _ = start_daemon({"clip": {"url": str(assets.clip), "loop": True}})
    try:
        sub.wait_message(f"edgedet/{NODE}/clip/detections", timeout=120)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        stop_daemon(proc)
    assert code == 0 and elapsed < 5.0, f"exit {code} after {elapsed:.1f}s\n{proc.output()}"
    assert sub.wait_message(f"edgedet/{NODE}/status", b"stopped").retain is False
    print(f"SIGTERM -> exit 0 in {elapsed:.2f}s")


def test_two_cameras_rtsp_and_looping_file(rtsp_server, assets, start_daemon):
    proc, sub, _ = start_daemon({"live": {"url": rtsp_server.url}, "replay": {"url": str(assets.clip), "loop": True}})
    try:
        sub.wait_for(
            lambda m: len(detections(m, "live")) >= 5 and len(detections(m, "replay")) >= 5,
            timeout=150, what="5 messages from each camera",
        )
    finally:
        assert stop_daemon(proc, timeout=5) == 0, proc.output()


def test_file_is_processed_completely_then_exit_0(tmp_path: Path, assets, start_daemon):
    """realtime: false + loop: false -> back-pressure, no drops, every frame published, exit 0."""
    clip = frames_clip(assets.frames, tmp_path / "short.mp4", 20)
    proc, sub, _ = start_daemon({"file": {"url": str(clip), "realtime": False, "queue_size": 2}},
                                mqtt={"publish_empty": True})
    code = proc.wait(timeout=180)
    assert code == 0, proc.output()
    sub.wait_for(lambda m: len(detections(m, "file")) >= 20, timeout=10, what="all 20 frames")
    # With back-pressure the default layout runs one worker per core, so two frames can finish in
    # either order: every seq arrives exactly once; `seq` tells consumers the order.
    assert sorted(m["seq"] for m in detections(sub, "file")) == list(range(20))
    assert "all cameras ended; 20 frame(s) processed" in proc.output()


def test_newest_frame_policy_bounds_latency(assets, start_daemon):
    """A realtime 25 fps source and a model slower than 25 fps: frames are dropped (and counted),
    latency stays bounded by about two inference times instead of growing."""
    proc, sub, mport = start_daemon({"cam": {"url": str(assets.clip), "loop": True, "realtime": True}},
                                    mqtt={"publish_empty": True})
    try:
        sub.wait_for(lambda m: len(detections(m, "cam")) >= 40, timeout=180, what="40 messages")
        text = metrics_text(mport)
    finally:
        assert stop_daemon(proc, timeout=5) == 0, proc.output()
    msgs = detections(sub, "cam")[5:]  # skip warm-up
    e2e = [m["latency_ms"]["capture_to_publish"] for m in msgs]
    inference = statistics.median(m["latency_ms"]["inference"] for m in msgs)
    assert 1000 / inference < 25, "this test needs a model slower than the 25 fps source"
    dropped = parse_metric(text, "edgedet_frames_dropped_total", {"camera": "cam", "reason": "queue_full"})
    captured = parse_metric(text, "edgedet_frames_captured_total", {"camera": "cam"})
    assert dropped > 0 and captured > len(msgs)
    # Age of a frame when published: it waited at most one inference in the queue, then its own.
    p90 = sorted(e2e)[int(0.9 * len(e2e)) - 1]
    assert p90 <= 2.5 * inference + 50, f"p90 e2e {p90:.0f} ms vs inference {inference:.0f} ms"
    first, second = e2e[: len(e2e) // 2], e2e[len(e2e) // 2:]
    assert statistics.median(second) < 1.5 * statistics.median(first) + 20, "latency must not grow"
    seqs = [m["seq"] for m in msgs]
    assert any(b - a > 1 for a, b in zip(seqs, seqs[1:], strict=False)), "seq gaps show the dropped frames"
    print(f"newest-frame: inference {inference:.0f} ms, e2e p50 {statistics.median(e2e):.0f} p90 {p90:.0f} ms, "
          f"dropped {dropped:.0f}/{captured:.0f}")


def test_healthz_503_without_broker(tmp_path: Path, assets):
    from tests.helpers import free_port

    cfg, mport = write_config(tmp_path, {"cam": {"url": str(assets.clip), "loop": True}}, free_port())
    proc = run_daemon(cfg)
    try:
        status, body = wait_for(lambda: _reachable(mport), timeout=60, what="metrics endpoint")
        assert status == 503 and "not connected" in body["reason"], body
        text = metrics_text(mport)
        assert parse_metric(text, "edgedet_mqtt_connected") == 0
    finally:
        assert stop_daemon(proc, timeout=8) == 0, proc.output()


def _reachable(port: int) -> tuple[int, dict] | None:
    try:
        return healthz(port)
    except OSError:
        return None
