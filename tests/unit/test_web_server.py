"""The web console's server in-process (real uvicorn on a free loopback port, real SQLite, real
LiveFrames): /metrics and /healthz as before, every /api/v1 endpoint, path validation, the write
token, auth off loopback, and 500 slow connections."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgedet.config.sections import WebConfig, WebFeedbackConfig
from edgedet.errors import EnvironmentFault
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.schemas import load_schema
from edgedet.types import Detection, Detections, Frame

pytest.importorskip("fastapi", reason="the web console needs the 'web' extra (fastapi, uvicorn)")

from edgedet.web.api import WRITE_HEADER, create_app  # noqa: E402 - after the skip: needs the extra
from edgedet.web.feedback import Feedback  # noqa: E402
from edgedet.web.history import EventHistory  # noqa: E402
from edgedet.web.live import LiveFrames  # noqa: E402
from edgedet.web.server import WebServer  # noqa: E402
from edgedet.web.status import Console  # noqa: E402

TOKEN = "Web-T0ken-For-Tests-0123456789"
CAMERA = "gate"


class FakePublisher:
    """Records what is published (written against edgedet.web.feedback.Publisher)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | str, int, bool, str]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        self.sent.append((topic, payload, qos, retain, kind))
        return True

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        pass


class Health:
    def __init__(self) -> None:
        self.result: Any = (True, {"cameras_up": 1})

    def __call__(self) -> tuple[bool, dict]:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class Site(NamedTuple):
    base: str
    console: Console
    publisher: FakePublisher
    health: Health
    metrics: Metrics
    state: Path


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def frame(seq: int, value: int = 40) -> tuple[Detections, Frame]:
    image = np.full((240, 320, 3), value, dtype=np.uint8)
    f = Frame(CAMERA, seq, time.monotonic_ns(), time.time(), image)
    det = Detection("smoke", 0, 0.8, (10.0, 20.0, 110.0, 120.0))
    return Detections(CAMERA, seq, f.t_mono_ns, f.t_wall, 320, 240, "m", (det,)), f


def event_msg(event_id: str, kind: str = "new", snapshot: str | None = None) -> dict[str, Any]:
    return {"type": kind, "id": event_id, "camera": CAMERA, "label": "smoke", "start_time": "2026-05-01T12:00:00.000Z",
            "end_time": None, "score": 0.8, "top_score": 0.85, "box": [10.0, 20.0, 110.0, 120.0], "zones": [],
            "frames_seen": 3, "snapshot": snapshot}


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    started: list[tuple[WebServer, Console]] = []

    def make(host: str = "127.0.0.1", **web: Any) -> Site:
        state = tmp_path / f"state{len(started)}"
        state.mkdir()
        cfg = WebConfig(**web)
        metrics = Metrics(CollectorRegistry())
        metrics.init_camera(CAMERA)
        live = LiveFrames()
        history = EventHistory(state / "web" / "history.sqlite3", cfg.history)
        publisher = FakePublisher()
        dataset = state / "dataset" if cfg.feedback.export_dataset else None
        feedback = Feedback(history, publisher, Topics("edgedet", "testnode"), dataset, lambda: ("smoke", "fire"))
        health = Health()
        console = Console(node="testnode", web=cfg, state_dir=state, broker="127.0.0.1:1883", metrics=metrics,
                          live=live, history=history, feedback=feedback, cameras=lambda: [CAMERA],
                          connected=lambda: True, health=health)
        server = WebServer(create_app(console), host, 0, request_timeout_s=cfg.request_timeout_s,
                           max_connections=cfg.max_connections, on_tick=console.sample)
        server.start()
        started.append((server, console))
        return Site(f"http://127.0.0.1:{server.server_address[1]}", console, publisher, health, metrics, state)

    yield make
    for server, console in started:
        server.stop()
        console.live.close()
        console.history.close()
        assert not server.thread.is_alive()


@pytest.fixture
def site(site_factory: Callable[..., Site]) -> Site:
    return site_factory()


def write_token(site: Site) -> dict[str, str]:
    status, _, body = get(site.base + "/api/v1/session")
    assert status == 200
    data = json.loads(body)
    return {data["write_header"]: data["write_token"]}


# --------------------------------------------------------------------------- /metrics + /healthz


def test_metrics(site: Site) -> None:
    site.metrics.frames_captured.labels(camera=CAMERA).inc(3)
    status, headers, body = get(site.base + "/metrics")
    assert status == 200 and headers["content-type"] == CONTENT_TYPE_LATEST
    assert b'edgedet_frames_captured_total{camera="gate"} 3.0' in body


@pytest.mark.parametrize(
    ("result", "status", "expected"),
    [
        ((True, {"cameras_up": 2}), 200, {"status": "ok", "cameras_up": 2}),
        ((False, {"reason": "no frames from gate for 30 s"}), 503,
         {"status": "unhealthy", "reason": "no frames from gate for 30 s"}),
        ((False, {}), 503, {"status": "unhealthy", "reason": "unhealthy"}),
        (RuntimeError("boom"), 503, {"status": "unhealthy", "reason": "health check failed: boom"}),
    ],
)
def test_healthz(site: Site, result: Any, status: int, expected: dict) -> None:
    site.health.result = result
    got, headers, body = get(site.base + "/healthz")
    assert (got, headers["content-type"]) == (status, "application/json")
    assert json.loads(body) == expected


def test_unknown_path_is_404(site: Site) -> None:
    assert get(site.base + "/nope")[0] == 404


def test_port_in_use_is_an_environment_fault(site_factory: Callable[..., Site]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(EnvironmentFault) as info:
            WebServer(lambda *_: None, "127.0.0.1", port)
    assert str(info.value) == f"metrics.port: 127.0.0.1:{port} is already in use"


# --------------------------------------------------------------------------- API


def test_openapi_documents_every_endpoint(site: Site) -> None:
    status, _, body = get(site.base + "/openapi.json")
    paths = set(json.loads(body)["paths"])
    assert status == 200
    assert {"/api/v1/status", "/api/v1/cameras", "/api/v1/cameras/{name}/latest.jpg",
            "/api/v1/cameras/{name}/stream.mjpeg", "/api/v1/events", "/api/v1/events/{event_id}",
            "/api/v1/events/{event_id}/snapshot.jpg", "/api/v1/events/{event_id}/feedback"} <= paths


def test_status(site: Site) -> None:
    site.metrics.outbox_messages.set(7)
    status, _, body = get(site.base + "/api/v1/status")
    data = json.loads(body)
    assert status == 200
    assert (data["node"], data["broker"], data["outbox"], data["cameras"]) == (
        "testnode", {"address": "127.0.0.1:1883", "connected": True}, {"backlog": 7}, 1)
    assert data["model"] is None  # not loaded yet (the daemon test checks a loaded one)
    assert "metrics-http" in data["threads"]["names"]
    assert data["disk"]["state_dir"] == str(site.state) and data["disk"]["used_bytes"] > 0
    assert data["uptime_s"] >= 0 and data["version"]


def test_cameras_state_rates_and_detections(site: Site) -> None:
    data = json.loads(get(site.base + "/api/v1/cameras")[2])
    assert [(c["name"], c["state"], c["seq"], c["detections"]) for c in data] == [(CAMERA, "down", None, [])]
    site.metrics.camera_up.labels(camera=CAMERA).set(1)
    for seq in range(3):
        site.console.live.publish(*frame(seq), 0.05)
    site.console.history.record(event_msg("1.5-abcdef"))
    cam = json.loads(get(site.base + "/api/v1/cameras")[2])[0]
    assert (cam["state"], cam["seq"], cam["e2e_p50_ms"]) == ("up", 2, 50.0)
    assert cam["detections"] == [{"label": "smoke", "class_id": 0, "score": 0.8, "box": [10.0, 20.0, 110.0, 120.0]}]
    assert [e["id"] for e in cam["active_events"]] == ["1.5-abcdef"]
    site.metrics.camera_frozen.labels(camera=CAMERA).set(1)
    assert json.loads(get(site.base + "/api/v1/cameras")[2])[0]["state"] == "frozen"
    assert cam["profile"] is None  # no profile published yet
    site.metrics.profile_active.labels(camera=CAMERA, profile="base").set(0)
    site.metrics.profile_active.labels(camera=CAMERA, profile="night").set(1)
    assert json.loads(get(site.base + "/api/v1/cameras")[2])[0]["profile"] == "night"


def test_latest_jpg(site: Site) -> None:
    url = site.base + f"/api/v1/cameras/{CAMERA}/latest.jpg"
    assert get(url)[0] == 404  # no frame yet
    site.console.live.publish(*frame(5), 0.05)
    status, headers, body = get(url)
    assert (status, headers["content-type"], headers["x-frame-seq"]) == (200, "image/jpeg", "5")
    assert body[:2] == b"\xff\xd8"
    raw = get(url + "?raw=1")[2]
    assert raw != body
    import cv2

    small = cv2.imdecode(np.frombuffer(get(url + "?h=60")[2], np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (60, 80, 3)
    assert get(url + "?h=0")[0] == 422
    assert get(site.base + "/api/v1/cameras/other/latest.jpg")[0] == 404


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "a%2Fb", "gate%00", "g" * 65, "%2E%2E"])
def test_camera_names_are_validated(site: Site, name: str) -> None:
    site.console.live.publish(*frame(1), 0.05)
    assert get(site.base + f"/api/v1/cameras/{name}/latest.jpg")[0] in (404, 422)


def test_mjpeg_is_encoded_once_per_frame_for_every_viewer(site_factory: Callable[..., Site]) -> None:
    site = site_factory(stream_fps=10.0)
    live = site.console.live
    live.publish(*frame(0), 0.05)
    assert live.encoded == 0  # nobody watches: nothing encoded
    stop = threading.Event()
    published = [0]

    def pipeline() -> None:
        seq = 1
        while not stop.wait(0.05):
            live.publish(*frame(seq, value=seq % 200), 0.05)
            published[0] = seq
            seq += 1

    parts = [0] * 4

    def viewer(n: int) -> None:
        with urllib.request.urlopen(site.base + f"/api/v1/cameras/{CAMERA}/stream.mjpeg", timeout=10) as resp:
            assert resp.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
            while parts[n] < 5:
                chunk = resp.read1(65536)
                assert chunk
                parts[n] += chunk.count(b"Content-Type: image/jpeg")

    feeder = threading.Thread(target=pipeline)
    feeder.start()
    viewers = [threading.Thread(target=viewer, args=(n,)) for n in range(4)]
    try:
        for v in viewers:
            v.start()
        for v in viewers:
            v.join(20)
    finally:
        stop.set()
        feeder.join(5)
    assert all(p >= 5 for p in parts), parts
    assert live.encoded <= published[0] + 1  # one encoding per frame, shared by the 4 viewers
    assert live.encoded < sum(parts)


def test_events_list_filters_and_one_event(site: Site) -> None:
    h = site.console.history
    h.record(event_msg("100.0-aaaaaa"), now=100.0)
    h.record({**event_msg("200.0-bbbbbb"), "label": "fire"}, now=200.0)
    h.record(event_msg("200.0-bbbbbb", "end") | {"label": "fire", "end_time": "2026-05-01T12:01:00.000Z"}, now=210.0)
    ids = lambda q="": [e["id"] for e in json.loads(get(site.base + "/api/v1/events" + q)[2])]  # noqa: E731
    assert ids() == ["200.0-bbbbbb", "100.0-aaaaaa"]
    assert ids("?label=fire") == ["200.0-bbbbbb"]
    assert ids("?since=150") == ["200.0-bbbbbb"]
    assert ids("?until=1970-01-01T00:02:30Z") == ["100.0-aaaaaa"]
    assert ids("?camera=yard") == []
    assert ids("?verdict=none&limit=1") == ["200.0-bbbbbb"]
    assert get(site.base + "/api/v1/events?since=yesterday")[0] == 422
    assert get(site.base + "/api/v1/events?limit=0")[0] == 422
    status, _, body = get(site.base + "/api/v1/events/200.0-bbbbbb")
    ev = json.loads(body)
    assert status == 200
    assert (ev["type"], ev["label"], ev["end_time"], [s["type"] for s in ev["timeline"]]) == (
        "end", "fire", "2026-05-01T12:01:00.000Z", ["new", "end"])
    assert get(site.base + "/api/v1/events/999.0-cccccc")[0] == 404


def test_snapshot_served_only_from_the_snapshot_store(site: Site, tmp_path: Path) -> None:
    snap = site.state / "snapshots" / CAMERA / "1.0-aaaaaa-1.jpg"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(b"\xff\xd8jpeg")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8secret")
    h = site.console.history
    h.record(event_msg("1.0-aaaaaa", snapshot=str(snap)))
    h.record(event_msg("2.0-bbbbbb", snapshot=str(site.state / "snapshots" / ".." / ".." / "secret.jpg")))
    h.record(event_msg("3.0-cccccc", snapshot=None))
    status, headers, body = get(site.base + "/api/v1/events/1.0-aaaaaa/snapshot.jpg")
    assert (status, headers["content-type"], body) == (200, "image/jpeg", b"\xff\xd8jpeg")
    assert get(site.base + "/api/v1/events/2.0-bbbbbb/snapshot.jpg")[0] == 404
    assert get(site.base + "/api/v1/events/3.0-cccccc/snapshot.jpg")[0] == 404
    for bad in ("..", "a..b", "..%2F..%2Fsecret", "%2E%2E", ".hidden"):
        assert get(site.base + f"/api/v1/events/{bad}/snapshot.jpg")[0] in (404, 422), bad


def test_feedback_needs_the_write_token_and_is_published(site: Site) -> None:
    site.console.history.record(event_msg("1.0-aaaaaa"))
    url = site.base + "/api/v1/events/1.0-aaaaaa/feedback"
    body = {"verdict": "false_alarm", "category": "fog", "note": "morning fog"}
    assert post(url, body)[0] == 403  # a forged cross-site form cannot set the header
    assert post(url, body, {WRITE_HEADER: "guess"})[0] == 403
    token = write_token(site)
    assert post(url, {"verdict": "maybe"}, token)[0] == 422
    assert post(url, {**body, "extra": 1}, token)[0] == 422
    assert post(url, {"verdict": "false_alarm", "category": "rain"}, token)[0] == 422
    assert post(site.base + "/api/v1/events/9.0-ffffff/feedback", body, token)[0] == 404
    status, ev = post(url, body, token)
    assert status == 200
    assert ev["feedback"]["verdict"] == "false_alarm" and ev["feedback"]["category"] == "fog"
    assert json.loads(get(site.base + "/api/v1/events/1.0-aaaaaa")[2])["feedback"]["note"] == "morning fog"
    assert [e["id"] for e in json.loads(get(site.base + "/api/v1/events?verdict=false_alarm")[2])] == ["1.0-aaaaaa"]
    [(topic, payload, qos, retain, kind)] = site.publisher.sent
    assert (topic, qos, retain, kind) == (f"edgedet/testnode/{CAMERA}/events", 1, False, "events")
    message = json.loads(payload)
    jsonschema.Draft202012Validator(load_schema("event_feedback")).validate(message)
    assert (message["type"], message["id"], message["verdict"]) == ("feedback", "1.0-aaaaaa", "false_alarm")


def test_feedback_exports_a_yolo_sample(site_factory: Callable[..., Site]) -> None:
    site = site_factory(feedback=WebFeedbackConfig(export_dataset=True))
    frames = site.state / "web" / "frames"
    frames.mkdir(parents=True)
    for event_id, verdict in (("1.0-aaaaaa", "true_alarm"), ("2.0-bbbbbb", "false_alarm")):
        (frames / f"{event_id}.jpg").write_bytes(b"\xff\xd8raw")
        (frames / f"{event_id}.json").write_text(json.dumps(
            {"width": 200, "height": 100, "boxes": [{"class_id": 1, "xyxy": [50, 25, 150, 75]}]}))
        site.console.history.record(event_msg(event_id), frame=str(frames / f"{event_id}.jpg"))
        status, ev = post(site.base + f"/api/v1/events/{event_id}/feedback", {"verdict": verdict}, write_token(site))
        assert status == 200 and ev["dataset"] == str(site.state / "dataset" / "images" / f"{event_id}.jpg")
    dataset = site.state / "dataset"
    assert (dataset / "labels" / "1.0-aaaaaa.txt").read_text() == "1 0.500000 0.500000 0.500000 0.500000\n"
    assert (dataset / "labels" / "2.0-bbbbbb.txt").read_text() == ""  # a negative sample
    assert (dataset / "images" / "2.0-bbbbbb.jpg").read_bytes() == b"\xff\xd8raw"
    import yaml

    data = yaml.safe_load((dataset / "data.yaml").read_text())
    assert data == {"path": str(dataset), "train": "images", "val": "images", "names": {0: "smoke", 1: "fire"}}


def test_the_ui_is_served_from_the_package(site: Site) -> None:
    status, headers, body = get(site.base + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/app.js" in body and b"http" not in body.replace(b"http-equiv", b"")  # no CDN
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        status, headers, _ = get(site.base + f"/static/{name}")
        assert status == 200 and ctype in headers["content-type"]
    assert headers["x-content-type-options"] == "nosniff"
    assert get(site.base + "/static/../web/api.py")[0] == 404


# --------------------------------------------------------------------------- auth off loopback


def test_auth_on_a_non_loopback_bind(site_factory: Callable[..., Site]) -> None:
    site = site_factory("0.0.0.0", auth_token=TOKEN, username="ops")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    wrong = [{"Authorization": "Bearer nope"}, {"Authorization": "Basic " + base64.b64encode(b"ops:nope").decode()},
             {"Authorization": "Basic " + base64.b64encode(f"root:{TOKEN}".encode()).decode()},
             {"Authorization": "Basic !!!"}, {}]
    paths = ["/", "/static/app.js", "/metrics", "/openapi.json", "/api/v1/status", "/api/v1/cameras",
             "/api/v1/events", "/api/v1/session"]
    for path in paths:
        for headers in wrong:
            status, got, _ = get(site.base + path, headers)
            assert status == 401, (path, headers)
            assert got["www-authenticate"].startswith("Basic")
        assert get(site.base + path, bearer)[0] == 200, path
        assert get(site.base + path, basic)[0] == 200, path
    assert get(site.base + "/healthz")[0] == 200  # always open (load balancers, systemd checks)
    # no response carries the secret
    for path in paths:
        assert TOKEN.encode() not in get(site.base + path, bearer)[2], path
    # writes need the write token as well as the auth
    site.console.history.record(event_msg("1.0-aaaaaa"))
    url = site.base + "/api/v1/events/1.0-aaaaaa/feedback"
    assert post(url, {"verdict": "true_alarm"})[0] == 401
    assert post(url, {"verdict": "true_alarm"}, bearer)[0] == 403
    token = json.loads(get(site.base + "/api/v1/session", bearer)[2])["write_token"]
    assert token != TOKEN
    assert post(url, {"verdict": "true_alarm"}, {**bearer, WRITE_HEADER: token})[0] == 200


def test_metrics_open_only_when_configured(site_factory: Callable[..., Site]) -> None:
    site = site_factory("0.0.0.0", auth_token=TOKEN, metrics_open=True)
    assert get(site.base + "/metrics")[0] == 200
    assert get(site.base + "/api/v1/status")[0] == 401


# --------------------------------------------------------------------------- slow connections


def test_500_slow_connections_healthz_stays_fast_and_they_are_closed(site_factory: Callable[..., Site]) -> None:
    site = site_factory(request_timeout_s=2.0)
    port = int(site.base.rsplit(":", 1)[1])
    socks = []
    try:
        for n in range(500):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half-sent request head
            socks.append(s)
        latencies = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert get(site.base + "/healthz")[0] == 200
            latencies.append(time.perf_counter() - t0)
        assert max(latencies) < 1.0, latencies
        # every slow connection is closed by the server after request_timeout_s
        deadline = time.monotonic() + 15
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(64) == b""
        print(f"/healthz under 500 slow connections: max {max(latencies) * 1000:.1f} ms")
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- the extra stays unimported


@pytest.mark.parametrize(("enabled", "imported"), [(False, False), (True, True)])
def test_the_web_extra_is_imported_only_when_used(tmp_path: Path, enabled: bool, imported: bool) -> None:
    code = f"""
import sys
from prometheus_client import CollectorRegistry
from edgedet import app  # noqa: F401  (what the daemon imports)
from edgedet.config.sections import MetricsConfig, WebConfig
from edgedet.metrics import Metrics
from edgedet.outputs.topics import Topics
from edgedet.web.launch import start_http

class Pub:
    topics = Topics("edgedet", "n")
    connected = True
    def publish(self, *a, **k): return True
    def set_retained(self, *a): pass

http = start_http(MetricsConfig(port=0), WebConfig(enabled={enabled}), node="n", state_dir={str(tmp_path)!r},
                  metrics=Metrics(CollectorRegistry()), health=lambda: (True, {{}}), publisher=Pub(),
                  cameras=lambda: [], broker="b")
http.stop()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "uvicorn", "starlette")) != [])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(imported)
