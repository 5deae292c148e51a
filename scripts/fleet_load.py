#!/usr/bin/env python3
"""Fleet load test: N simulated nodes x C cameras against one real mosquitto on loopback, with
``edgedet fleet`` subscribed to it. Bounded rate and duration.

    .venv/bin/python scripts/fleet_load.py --nodes 200 --cameras 4 --duration 60 --rate 2000

Each node is one MQTT client (its own connection, Last Will, retained status/info/camera
status) speaking the fleet contract (docs/FLEET.md). Every second each camera publishes its
retained stats (10x the daemon's rate, to load the broker), and events arrive at ``--event-rate``
per second over the whole fleet; ``--rate`` caps the total messages per second. A probe flips one
camera's retained status every ``--probe-every`` seconds and times how long the fleet console's
``/api/nodes`` takes to show it (polled every 10 ms).

Prints one JSON object: messages sent and per second, mosquitto's and the fleet's CPU (% of one
core, from /proc), and the state-change latency (median, p95, max, ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import free_port, pwd_name, wait_for  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_nodes(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/nodes", timeout=5) as r:
        return json.loads(r.read())["nodes"]


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (after all nodes connected)")
    ap.add_argument("--rate", type=float, default=2000.0, help="cap on messages per second, all nodes together")
    ap.add_argument("--event-rate", type=float, default=20.0, help="event messages per second, whole fleet")
    ap.add_argument("--probe-every", type=float, default=2.0)
    ap.add_argument("--prefix", default="edgedet")
    args = ap.parse_args()
    if not (1 <= args.nodes <= 2000 and 1 <= args.cameras <= 32 and 0 < args.duration <= 600):
        ap.error("--nodes 1-2000, --cameras 1-32, --duration up to 600 s")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tmp = Path(tempfile.mkdtemp(prefix="fleet-load-"))
    port, http_port = free_port(), free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {pwd_name()}\n"
                                "max_queued_messages 100000\n")
    broker = subprocess.Popen([mosquitto, "-c", str(tmp / "m.conf")], stdout=subprocess.DEVNULL,
                              stderr=open(tmp / "mosquitto.log", "wb"))  # noqa: SIM115
    base = f"http://127.0.0.1:{http_port}"
    fleet = None
    clients: list[mqtt.Client] = []
    try:
        time.sleep(0.3)  # a fresh broker's port; the fleet retries on its own anyway
        fleet = subprocess.Popen([sys.executable, "-m", "edgedet", "fleet", "--broker", f"127.0.0.1:{port}",
                                  "--db", str(tmp / "fleet.db"), "--listen", f"127.0.0.1:{http_port}",
                                  "--prefix", args.prefix], cwd=REPO, stdout=open(tmp / "fleet.log", "wb"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT)
        wait_for(lambda: healthy(base), 30, "fleet up")
        cams = [f"c{i}" for i in range(args.cameras)]
        for n in range(args.nodes):
            node = f"node{n:04d}"
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"load-{node}")
            c.will_set(f"{args.prefix}/{node}/status", "offline", qos=1, retain=True)
            c.connect("127.0.0.1", port, 60)
            c.loop_start()
            c.publish(f"{args.prefix}/{node}/status", "online", qos=1, retain=True)
            c.publish(f"{args.prefix}/{node}/info", json.dumps({
                "node": node, "version": "load", "start_id": f"{n:012x}", "started_at": "2025-01-01T00:00:00.000Z",
                "model": "sim", "backend": "none", "precision": "fp32", "cameras": cams, "console_url": None}),
                qos=1, retain=True)
            for cam in cams:
                c.publish(f"{args.prefix}/{node}/{cam}/status", "online", qos=1, retain=True)
            clients.append(c)
        wait_for(lambda: len(get_nodes(base)) == args.nodes, 60, "every node at the fleet", interval=0.5)

        stop = threading.Event()
        sent = [0]
        latencies: list[float] = []

        def probe() -> None:
            c, online = clients[0], True
            topic = f"{args.prefix}/node0000/c0/status"
            while not stop.wait(args.probe_every):
                online = not online
                word = "online" if online else "offline"
                t0 = time.monotonic()
                c.publish(topic, word, qos=1, retain=True)
                while time.monotonic() - t0 < 10:
                    node = next(n for n in get_nodes(base) if n["node"] == "node0000")
                    if node["cameras"][0]["status"] == word:
                        latencies.append((time.monotonic() - t0) * 1000)
                        break
                    time.sleep(0.01)

        prober = threading.Thread(target=probe, name="probe")
        cpu0 = (cpu_seconds(broker.pid), cpu_seconds(fleet.pid))
        t_start = time.monotonic()
        prober.start()
        per_tick = max(1, int(args.rate / 10))
        event_every = max(1, int(args.rate / max(args.event_rate, 0.1)))
        k = 0
        stats = json.dumps({"fps": 5.0, "latency_ms_p50": 120.0, "latency_ms_p95": 180.0, "frames": 50,
                            "interval_s": 1.0})
        while time.monotonic() - t_start < args.duration:
            tick = time.monotonic()
            for _ in range(per_tick):
                n, cam = divmod(k, args.cameras)
                n %= args.nodes
                node = f"node{n:04d}"
                if k % event_every == 0:
                    ev = {"type": "new", "id": f"ev-{k}", "camera": cams[cam], "label": "person",
                          "start_time": "2025-01-01T00:00:00.000Z", "end_time": None, "score": 0.8, "top_score": 0.8,
                          "box": [0, 0, 1, 1], "zones": [], "frames_seen": 3, "snapshot": None}
                    clients[n].publish(f"{args.prefix}/{node}/{cams[cam]}/events", json.dumps(ev), qos=1)
                else:
                    clients[n].publish(f"{args.prefix}/{node}/{cams[cam]}/stats", stats, qos=0, retain=True)
                k += 1
                sent[0] += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        elapsed = time.monotonic() - t_start
        cpu1 = (cpu_seconds(broker.pid), cpu_seconds(fleet.pid))
        stop.set()
        prober.join(15)
        lat = sorted(latencies)
        report = {
            "nodes": args.nodes, "cameras_per_node": args.cameras, "clients": len(clients),
            "duration_s": round(elapsed, 1), "messages": sent[0], "messages_per_s": round(sent[0] / elapsed, 1),
            "mosquitto_cpu_pct_of_one_core": round(100 * (cpu1[0] - cpu0[0]) / elapsed, 1),
            "fleet_cpu_pct_of_one_core": round(100 * (cpu1[1] - cpu0[1]) / elapsed, 1),
            "state_change_latency_ms": {
                "samples": len(lat), "median": round(statistics.median(lat), 1) if lat else None,
                "p95": round(lat[max(0, int(0.95 * len(lat)) - 1)], 1) if lat else None,
                "max": round(lat[-1], 1) if lat else None},
            "console_poll_ms": 500,
        }
        print(json.dumps(report, indent=2))
        return 0
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        for p in (fleet, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
