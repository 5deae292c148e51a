"""A node simulator speaking the fleet contract (docs/FLEET.md), run as its own process.

    python tests/fleet_sim.py --host H --port P --node N [--prefix edgedet] [--cameras c0,c1]

Connects with a Last Will ``offline`` on ``<prefix>/<node>/status``, publishes the retained
status ``online``, info, camera statuses and stats, subscribes to ``<prefix>/<node>/feedback``,
then reads commands from stdin, one a line:

* ``event K`` -- publishes ``new``, ``update``, ``end`` of event ``sim-K`` on the first camera
  (QoS 1), prints ``sent K`` once paho accepted them;
* ``quit`` -- publishes ``stopped`` and exits.

Every feedback message received is printed as ``feedback <json>``. stdout lines are flushed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def event_message(kind: str, k: int, camera: str, t0: float) -> dict[str, Any]:
    return {"type": kind, "id": f"sim-{k}", "camera": camera, "label": "person", "start_time": iso(t0),
            "end_time": iso(t0 + 1) if kind == "end" else None, "score": 0.8, "top_score": 0.9,
            "box": [1.0, 2.0, 30.0, 40.0], "zones": [], "frames_seen": 3, "snapshot": None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--node", required=True)
    ap.add_argument("--prefix", default="edgedet")
    ap.add_argument("--cameras", default="c0")
    args = ap.parse_args()
    cams = args.cameras.split(",")
    base = f"{args.prefix}/{args.node}"
    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            print(line, flush=True)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{args.node}-{uuid.uuid4().hex[:6]}")
    client.will_set(f"{base}/status", "offline", qos=1, retain=True)
    info = {"node": args.node, "version": "sim", "start_id": uuid.uuid4().hex[:12], "started_at": iso(time.time()),
            "model": "sim", "backend": "none", "precision": "fp32", "cameras": cams, "console_url": None}

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        c.publish(f"{base}/status", "online", qos=1, retain=True)
        c.publish(f"{base}/info", json.dumps(info), qos=1, retain=True)
        for cam in cams:
            c.publish(f"{base}/{cam}/status", "online", qos=1, retain=True)
            c.publish(f"{base}/{cam}/stats", json.dumps({"fps": 5.0, "latency_ms_p50": 120.0, "latency_ms_p95": 180.0,
                                                         "frames": 50, "interval_s": 10.0}), qos=1, retain=True)
        c.subscribe(f"{base}/feedback", 1)
        say("connected")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        say(f"feedback {msg.payload.decode()}")

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(args.host, args.port, 10)
    client.loop_start()
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "event":
                k = int(cmd[1])
                t0 = time.time()
                infos = [client.publish(f"{base}/{cams[0]}/events", json.dumps(event_message(kind, k, cams[0], t0)),
                                        qos=1) for kind in ("new", "update", "end")]
                ok = all(i.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) for i in infos)
                say(f"sent {k}" if ok else f"failed {k}")
            elif cmd[0] == "quit":
                break
        client.publish(f"{base}/status", "stopped", qos=1, retain=True).wait_for_publish(3)
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
