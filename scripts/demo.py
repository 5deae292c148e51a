#!/usr/bin/env python3
"""`make demo`: run edgedet on the demo clip and show MQTT messages + a live latency summary.

Prints the web console's URL first (http://127.0.0.1:9108/), starts a loopback mosquitto on
127.0.0.1:1883 when no broker answers there, runs `edgedet run -c config/demo.yaml`, subscribes to
`edgedet/demo/#` and prints each message in one line (binary payloads such as snapshots as
`snapshot (N bytes)`) plus a summary (fps, end-to-end p50/p95, drops) every 5 s, until Ctrl-C or
DEMO_SECONDS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
HOST, PORT, METRICS_PORT = "127.0.0.1", 1883, 9108


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start_broker() -> subprocess.Popen[bytes] | None:
    if port_open(HOST, PORT):
        print(f"demo: using the MQTT broker already listening on {HOST}:{PORT}")
        return None
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        sys.exit("demo: no MQTT broker on 127.0.0.1:1883 and mosquitto is not installed (run `make sysdeps`)")
    conf = Path(tempfile.mkdtemp(prefix="edgedet-demo-")) / "mosquitto.conf"
    conf.write_text(f"listener {PORT} {HOST}\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_open(HOST, PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("demo: could not start mosquitto on 127.0.0.1:1883")
        time.sleep(0.1)
    print(f"demo: started mosquitto on {HOST}:{PORT} (pid {proc.pid})")
    return proc


def metric_sum(name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://{HOST}:{METRICS_PORT}/metrics", timeout=2).read().decode()
    except OSError:
        return float("nan")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "0")) or None
    print(f"demo: web console on http://{HOST}:{METRICS_PORT}/ (cameras, events, verdicts; API: /openapi.json)",
          flush=True)
    broker = start_broker()
    latencies: list[float] = []
    count = [0]
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            text = msg.payload.decode()
        except UnicodeDecodeError:
            text = None
        if text is None or msg.topic.endswith("/snapshot"):
            kind = msg.topic.rsplit("/", 1)[-1] if msg.topic.endswith("/snapshot") else "binary payload"
            print(f"{msg.topic} {kind} ({len(msg.payload)} bytes)")
        elif msg.topic.endswith("/detections"):
            data = json.loads(text)
            with lock:
                latencies.append(data["latency_ms"]["capture_to_publish"])
                count[0] += 1
            labels = ", ".join(f"{d['label']} {d['score']:.2f}" for d in data["detections"])
            print(f"{msg.topic} seq={data['seq']} [{labels}] e2e={data['latency_ms']['capture_to_publish']:.0f} ms")
        else:
            print(f"{msg.topic} {text}")

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgedet-demo-viewer-{os.getpid()}")
    sub.on_message = on_message
    sub.on_connect = lambda c, *_: c.subscribe("edgedet/demo/#", qos=0)
    sub.connect(HOST, PORT)
    sub.loop_start()
    daemon = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "-c", "config/demo.yaml"], cwd=REPO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start = time.monotonic()
    last = (start, 0)
    try:
        while not stop.wait(5.0):
            if daemon.poll() is not None:
                print(f"demo: edgedet exited with code {daemon.returncode}")
                break
            now = time.monotonic()
            with lock:
                n, window = count[0], list(latencies[-200:])
            fps = (n - last[1]) / (now - last[0])
            last = (now, n)
            print(
                f"--- summary: {fps:.1f} fps published, end-to-end p50 {pct(window, 0.5):.0f} ms "
                f"p95 {pct(window, 0.95):.0f} ms, frames dropped {metric_sum('edgedet_frames_dropped_total'):.0f} "
                f"(newest-frame policy), processed {metric_sum('edgedet_frames_processed_total'):.0f} ---"
            )
            if seconds and now - start >= seconds:
                break
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        sub.loop_stop()
        sub.disconnect()
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    with lock:
        print(f"demo: {count[0]} detection messages, end-to-end p50 {pct(latencies, 0.5):.0f} ms "
              f"p95 {pct(latencies, 0.95):.0f} ms")
    return 0 if count[0] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
