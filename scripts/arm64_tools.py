"""Host-side helpers of ``scripts/arm64_check.sh`` (run with the x86 venv's python).

    python scripts/arm64_tools.py compare X86.jsonl ARM.jsonl [--box-px 1] [--score 0.01] [--name NAME]
        Compare two ``edgedet detect`` outputs image by image: the same number of detections and
        the same classes, matched boxes (same class, IoU >= 0.5) within --box-px on every
        coordinate and scores within --score. Prints one line of figures; exit 1 when outside.

    python scripts/arm64_tools.py listen --port P --out FILE --until-detections N --timeout S
        Subscribe to ``#`` on 127.0.0.1:P, write every message as one JSON line to FILE; returns
        when N detections messages arrived (exit 0) or after S seconds (exit 1).

    python scripts/arm64_tools.py validate FILE
        Check the messages of ``listen`` against the schemas in edgedet/schemas (detections, stats,
        events, node info); print counts; exit 1 on the first invalid message or none at all.

Timings under emulation mean nothing: nothing here measures speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.boxes import greedy_match, iou_matrix
from edgedet.schemas import load_schema


def _read_detect(path: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("{"):
            rec = json.loads(line)
            out[rec["image"]] = rec["detections"]
    if not out:
        raise SystemExit(f"error: {path}: no `edgedet detect` records")
    return out


def compare(a_path: Path, b_path: Path, box_px: float, score_tol: float, name: str) -> int:
    a, b = _read_detect(a_path), _read_detect(b_path)
    problems: list[str] = []
    worst_box = worst_score = 0.0
    n_dets = 0
    if sorted(a) != sorted(b):
        problems.append(f"images differ: {sorted(a)} vs {sorted(b)}")
    for image in sorted(set(a) & set(b)):
        da, db = a[image], b[image]
        n_dets += len(da)
        if len(da) != len(db):
            problems.append(f"{image}: {len(da)} vs {len(db)} detections")
        if sorted(d["class_id"] for d in da) != sorted(d["class_id"] for d in db):
            problems.append(f"{image}: classes differ")
        if not da or not db:
            continue
        boxes_a = np.array([d["box"] for d in da], dtype=np.float64)
        boxes_b = np.array([d["box"] for d in db], dtype=np.float64)
        iou = iou_matrix(boxes_a, boxes_b)
        same_class = np.array([[x["class_id"] == y["class_id"] for y in db] for x in da])
        iou = np.where(same_class, iou, 0.0)
        pairs = greedy_match(iou, 0.5)
        if len(pairs) != min(len(da), len(db)):
            problems.append(f"{image}: {min(len(da), len(db)) - len(pairs)} detections without a match")
        for i, j in pairs:
            worst_box = max(worst_box, float(np.abs(boxes_a[i] - boxes_b[j]).max()))
            worst_score = max(worst_score, abs(da[i]["score"] - db[j]["score"]))
    if worst_box > box_px:
        problems.append(f"box delta {worst_box:.2f} px > {box_px}")
    if worst_score > score_tol:
        problems.append(f"score delta {worst_score:.4f} > {score_tol}")
    verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
    print(
        f"parity {name}: {len(a)} images, {n_dets} detections, max box delta {worst_box:.2f} px, "
        f"max score delta {worst_score:.4f} -> {verdict}"
    )
    return 0 if not problems else 1


def listen(port: int, out: Path, until: int, timeout: float) -> int:
    import paho.mqtt.client as mqtt

    done = threading.Event()
    count = 0
    lock = threading.Lock()
    fh = out.open("w", encoding="utf-8")

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("#", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        try:
            payload: Any = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            payload = {"binary_bytes": len(msg.payload)}
        with lock:
            fh.write(json.dumps({"topic": msg.topic, "retain": bool(msg.retain), "payload": payload}) + "\n")
            fh.flush()
            if msg.topic.endswith("/detections"):
                count += 1
                if count >= until:
                    done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"arm64-check-{port}")
    client.on_connect = on_connect
    client.on_message = on_message
    deadline = time.monotonic() + timeout
    while True:  # the broker inside the rootfs may still be starting under emulation
        try:
            client.connect("127.0.0.1", port)
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"error: no broker on 127.0.0.1:{port} after {timeout:.0f} s", file=sys.stderr)
                return 1
            done.wait(0.5)
    client.loop_start()
    ok = done.wait(max(0.0, deadline - time.monotonic()))
    client.loop_stop()
    client.disconnect()
    fh.close()
    print(f"listen: {count} detections messages on :{port}" + ("" if ok else f" (wanted {until})"))
    return 0 if ok else 1


_SCHEMAS = {"detections": "detections", "stats": "stats", "events": "event", "info": "node_info"}


def validate(path: Path) -> int:
    import jsonschema

    counts: dict[str, int] = {}
    validators = {leaf: jsonschema.Draft202012Validator(load_schema(name)) for leaf, name in _SCHEMAS.items()}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        leaf = rec["topic"].rsplit("/", 1)[-1]
        if leaf not in validators or not rec["payload"]:
            continue
        try:
            validators[leaf].validate(json.loads(rec["payload"]))
        except (ValueError, jsonschema.ValidationError) as exc:
            print(f"error: {rec['topic']}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        counts[leaf] = counts.get(leaf, 0) + 1
    print("schema: " + ", ".join(f"{n} {leaf}" for leaf, n in sorted(counts.items())) + " valid")
    return 0 if counts.get("detections") else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--box-px", type=float, default=1.0)
    c.add_argument("--score", type=float, default=0.01)
    c.add_argument("--name", default="")
    li = sub.add_parser("listen")
    li.add_argument("--port", type=int, required=True)
    li.add_argument("--out", type=Path, required=True)
    li.add_argument("--until-detections", type=int, default=5)
    li.add_argument("--timeout", type=float, default=300.0)
    v = sub.add_parser("validate")
    v.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        return compare(args.a, args.b, args.box_px, args.score, args.name or args.b.stem)
    if args.cmd == "listen":
        return listen(args.port, args.out, args.until_detections, args.timeout)
    return validate(args.file)


if __name__ == "__main__":
    sys.exit(main())
