"""The live-viewers row, child side: the pipeline on the video paced at its fps (looped), its
newest frames published to the web console's ``LiveFrames`` as the daemon's result sink does, the
console's real server (FastAPI on uvicorn) on a loopback port, and ``viewers`` MJPEG clients in a
separate process.

Phases alternate without and with the viewers (off, on, off, on) in one process, so box drift
hits both alike; the row reports processed fps of each and their ratio (target >= 0.95).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgedet.bench.pipeline import CAMERA, FIRST_RESULT_TIMEOUT_S, STALL_TIMEOUT_S, Recorder, running
from edgedet.bench.spawn import BenchError, LiveSpec
from edgedet.config import CameraConfig
from edgedet.config.sections import WebConfig
from edgedet.inference import thread_layout
from edgedet.metrics import Metrics
from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads
from edgedet.outputs.topics import Topics
from edgedet.types import Detections, Frame
from edgedet.web.feedback import Feedback
from edgedet.web.history import EventHistory
from edgedet.web.live import LiveFrames
from edgedet.web.status import Console

PHASES = 4


class LiveRecorder(Recorder):
    """The bench's recording sink that also publishes each result to the console (as ResultSink does)."""

    def __init__(self, live: LiveFrames) -> None:
        super().__init__()
        self.live = live

    def __call__(self, dets: Detections, frame: Frame) -> None:
        super().__call__(dets, frame)
        self.live.publish(dets, frame, (time.monotonic_ns() - dets.t_mono_ns) / 1e9)


class _Offline:
    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        return True

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        pass


# The viewers run in their own process (as browsers would on other machines): MJPEG clients in the
# pipeline's process would compete with it for the GIL, which no real viewer does.
VIEWERS_CODE = """
import http.client, sys, threading, time
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
parts, errors = [0] * count, []
def view(n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", "/api/v1/cameras/bench/stream.mjpeg")
        resp = conn.getresponse()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            chunk = resp.read1(65536)
            if not chunk:
                break
            parts[n] += chunk.count(b"Content-Type: image/jpeg")
    except OSError as exc:
        errors.append(str(exc))
    finally:
        conn.close()
threads = [threading.Thread(target=view, args=(n,)) for n in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(parts), len(errors))
"""


def measure_viewers(spec: LiveSpec) -> dict[str, Any]:
    from edgedet.web.api import create_app  # the web extra
    from edgedet.web.server import WebServer

    count, threads = thread_layout(None, spec.workers, spec.threads)
    set_torch_threads(threads)
    detector = TorchScriptDetector(spec.model)
    camera = CameraConfig(url=spec.url, loop=True, realtime=True, queue_size=spec.queue_size,
                          stall_timeout_s=STALL_TIMEOUT_S)
    live = LiveFrames()
    phase_s = max(5.0, spec.seconds / 2)
    with tempfile.TemporaryDirectory(prefix="edgedet-bench-web-") as tmp:
        web = WebConfig()
        history = EventHistory(Path(tmp) / "history.sqlite3", web.history)
        feedback = Feedback(history, _Offline(), Topics("bench", "bench"), None, lambda: ())
        console = Console(node="bench", web=web, state_dir=Path(tmp), broker="-", metrics=Metrics(CollectorRegistry()),
                          live=live, history=history, feedback=feedback, cameras=lambda: [CAMERA],
                          connected=lambda: True, health=lambda: (True, {}))
        server = WebServer(create_app(console), "127.0.0.1", 0)
        server.start()
        windows: list[tuple[bool, int, int]] = []
        parts = errors = 0
        try:
            with running(detector, camera, count, sink=LiveRecorder(live)) as pipe:
                if not pipe.sink.first.wait(FIRST_RESULT_TIMEOUT_S):
                    raise BenchError(f"viewers: no frame processed within {FIRST_RESULT_TIMEOUT_S:g} s")
                pipe.stop.wait(spec.warmup_s)
                for phase in range(PHASES):
                    watching = phase % 2 == 1
                    clients = None
                    if watching:
                        clients = subprocess.Popen(
                            ["nice", "-n", "19", sys.executable, "-c", VIEWERS_CODE, str(server.server_address[1]),
                             str(spec.viewers), str(phase_s + 1.0)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                        pipe.stop.wait(0.5)  # the streams are open before the window starts
                    t0 = time.monotonic_ns()
                    pipe.stop.wait(phase_s)
                    t1 = time.monotonic_ns()
                    windows.append((watching, t0, t1))
                    if clients is not None:
                        out, _ = clients.communicate(timeout=30)
                        got, failed = (int(v) for v in out.split())
                        parts, errors = parts + got, errors + failed
        finally:
            server.stop()
            live.close()
            history.close()
    events = [t for t, _ in pipe.sink.events]

    def fps(watching: bool) -> float:
        frames = sum(sum(1 for t in events if t0 <= t <= t1) for w, t0, t1 in windows if w == watching)
        seconds = sum((t1 - t0) / 1e9 for w, t0, t1 in windows if w == watching)
        return frames / seconds

    without, with_ = fps(False), fps(True)
    return {
        "viewers": spec.viewers,
        "phases": PHASES,
        "phase_s": phase_s,
        "workers": count,
        "threads": threads,
        "fps_without": round(without, 3),
        "fps_with": round(with_, 3),
        "ratio": round(with_ / without, 4) if without else None,
        "encoded": live.encoded,
        "parts_received": parts,
        "viewer_errors": errors,
        "viewers_where": "a separate process at nice 19 on the same box (standing in for remote browsers)",
    }
