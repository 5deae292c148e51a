#!/usr/bin/env python3
"""Soak test: run ``edgedet run`` for a while at full speed and fail on leaks or a latency trend.

    .venv/bin/python scripts/soak.py                               # 10 min, a sample every 10 s
    .venv/bin/python scripts/soak.py --minutes 60 --json soak.json
    .venv/bin/python scripts/soak.py --broker 10.0.0.5:1883 --realtime-camera

The daemon runs as a subprocess (``python -m edgedet run -c <generated config>``) on the demo
clip as a file camera with ``loop: true, realtime: false``: frames are read back to back and the
camera queue applies back-pressure, so every frame is processed and none is dropped; the
pipeline runs flat out for the whole soak. ``--realtime-camera`` adds a second, 25 fps paced
camera on the same clip. A mosquitto is started on a free loopback port unless ``--broker``.

Sampling starts when the first frame has been processed (model load excluded). Every
``--interval`` seconds a row is printed: the daemon's RSS (VmRSS), threads, open fds
(/proc/<pid>/fd), frames processed per second (``edgedet_frames_processed_total`` delta), MQTT
messages received, end-to-end p99 over the interval, frames dropped and the 1-min load average.
p99 is exact: nearest rank over ``latency_ms.capture_to_publish`` of every detections message a
subscriber in this script received in the interval (``mqtt.publish_empty: true``, so every frame
is published). ``p99h`` cross-checks it from the deltas of ``edgedet_end_to_end_seconds_bucket``
(linear inside a bucket, like Prometheus' ``histogram_quantile``; coarse above 1 s).

Verdict, over the samples taken at or after ``--warmup`` seconds ("post-warmup"; the first one
is the baseline, the last three are the end):

* rss      max(RSS of the end) <= baseline RSS * 1.10
* threads  max(threads of the end) <= baseline + 2    (transients: a request thread, a reconnect)
* fds      max(fds of the end) <= baseline + 2
* p99      (the MQTT one; the histogram one when no message arrived in an interval)
           FAILS only when both agree: the median of the last third of the post-warmup p99 values
           is > 1.3 x the median of the first third, AND the Theil-Sen slope (median of the
           pairwise slopes: a robust linear regression) projects a rise of > 20 % of the
           first-third median over the post-warmup span. One slow interval (a p99 over 10 s is
           close to the max of that interval) or a noisy short run trips at most one of them; a
           sustained rise trips both.
* frames   every interval processed at least one frame; the back-to-back camera dropped none
* metrics  every /metrics scrape answered (within 5 s)
* mqtt     detections messages received >= 90 % of the frames processed after the warm-up, and
           every payload carried a latency
* exit     SIGTERM at the end: the daemon exits 0 within 20 s

Exit status: 0 pass, 1 fail (a check failed, the daemon died, or the soak was interrupted),
2 bad arguments or missing input (clip, model, mosquitto).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
DEFAULT_CLIP = REPO / ".cache" / "demo" / "demo.mp4"
DEFAULT_MODEL = REPO / "models" / "demo.torchscript"
MAIN_CAMERA = "soak"
LIVE_CAMERA = "live"

RSS_LIMIT = 0.10  # relative growth
COUNT_TOLERANCE = 2  # threads / fds
P99_RATIO_LIMIT = 1.3  # last-third median / first-third median
P99_SLOPE_LIMIT = 0.20  # projected rise over the post-warmup span, relative to the first third
MQTT_DELIVERY_MIN = 0.9  # messages received / frames processed, after the warm-up
END_SAMPLES = 3
MIN_POST_SAMPLES = 6
SCRAPE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 20.0


class Usage(Exception):
    """Bad arguments or missing input: exit 2."""


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Scrape:
    """The counters one /metrics scrape gives, summed over cameras."""

    buckets: dict[float, float]  # le -> cumulative count
    processed: float
    dropped_main: float
    dropped: float


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # seconds since the first processed frame
    rss_mib: float
    threads: int
    fds: int
    frames: int | None  # processed in the interval (None: scrape failed)
    fps: float | None
    msgs: int  # detections messages received over MQTT in the interval
    p99_ms: float | None  # exact, from the MQTT payloads (histogram estimate when there were none)
    p99h_ms: float | None  # from the histogram bucket deltas
    dropped: int | None
    load1: float


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(VmRSS in MiB, threads, open fds) of ``pid``; OSError when it is gone."""
    rss_kib, threads = -1, -1
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    if rss_kib < 0 or threads < 0:
        raise OSError(f"/proc/{pid}/status has no VmRSS/Threads (a zombie?)")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib / 1024, threads, fds


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    buckets: dict[float, float] = {}
    processed = dropped = dropped_main = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edgedet_end_to_end_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "edgedet_frames_processed_total":
                processed += s.value
            elif s.name == "edgedet_frames_dropped_total":
                dropped += s.value
                if s.labels.get("camera") == MAIN_CAMERA:
                    dropped_main += s.value
    return Scrape(buckets, processed, dropped_main, dropped)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile from cumulative ``{le: count}`` buckets (Prometheus' histogram_quantile).

    Linear inside the bucket holding the rank; the lowest bucket starts at 0; a rank in the
    +Inf bucket gives the highest finite bound. None when there are no observations.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: new[le] - old.get(le, 0.0) for le in new}


def nearest_rank(q: float, values: list[float]) -> float | None:
    """The q-quantile of ``values`` by nearest rank (an observed value); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class LatencySubscriber:
    """Collects ``latency_ms.capture_to_publish`` of every detections message (paho network thread)."""

    def __init__(self, broker: tuple[str, int], topic: str, timeout: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._subscribed = threading.Event()
        self.bad = 0  # messages without a usable latency
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgedet-soak-{os.getpid()}")
        self._client.on_connect = lambda c, _u, _f, reason, _p: None if reason.is_failure else c.subscribe(topic, 0)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker[0], broker[1], keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"could not subscribe to {topic!r} on {broker[0]}:{broker[1]} within {timeout:g} s")

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            value = float(json.loads(msg.payload)["latency_ms"]["capture_to_publish"])
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.bad += 1
            return
        with self._lock:
            self._latencies.append(value)

    def take(self) -> list[float]:
        """The latencies (ms) received since the last call."""
        with self._lock:
            taken, self._latencies = self._latencies, []
        return taken

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------------- judging


def theil_sen(points: list[tuple[float, float]]) -> float:
    """Median of the pairwise slopes (robust to a minority of outliers); 0.0 for < 2 points."""
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(points, 2) if x2 != x1]
    return statistics.median(slopes) if slopes else 0.0


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def judge(samples: list[Sample], warmup: float) -> dict[str, Any]:
    """The verdict over ``samples`` (see the module docstring); ``["pass"]`` says it all."""
    post = [s for s in samples if s.t_s >= warmup]
    if len(post) < MIN_POST_SAMPLES:
        return {"pass": False, "failures": [f"only {len(post)} sample(s) after the {warmup:g} s warm-up "
                                            f"(need {MIN_POST_SAMPLES})"], "samples_after_warmup": len(post)}
    base, end = post[0], post[-END_SAMPLES:]
    failures: list[str] = []
    checks: dict[str, Any] = {"samples_after_warmup": len(post), "baseline_t_s": base.t_s}

    rss_end = max(s.rss_mib for s in end)
    growth = rss_end / base.rss_mib - 1
    checks["rss"] = {"start_mib": round(samples[0].rss_mib, 1), "baseline_mib": round(base.rss_mib, 1),
                     "end_mib": round(rss_end, 1), "growth_pct": round(100 * growth, 2),
                     "limit_pct": 100 * RSS_LIMIT, "ok": growth <= RSS_LIMIT}
    if growth > RSS_LIMIT:
        failures.append(f"RSS grew {100 * growth:+.1f} % ({base.rss_mib:.1f} -> {rss_end:.1f} MiB; "
                        f"limit +{100 * RSS_LIMIT:.0f} %)")

    for key in ("threads", "fds"):
        baseline = getattr(base, key)
        end_max = max(getattr(s, key) for s in end)
        ok = end_max <= baseline + COUNT_TOLERANCE
        checks[key] = {"start": getattr(samples[0], key), "baseline": baseline, "end": getattr(post[-1], key),
                       "end_max": end_max, "max": max(getattr(s, key) for s in post),
                       "min": min(getattr(s, key) for s in post), "tolerance": COUNT_TOLERANCE, "ok": ok}
        if not ok:
            failures.append(f"{key} grew {baseline} -> {end_max} (tolerance +{COUNT_TOLERANCE})")

    p99 = [(s.t_s, s.p99_ms) for s in post if s.p99_ms is not None]
    third = max(1, len(p99) // 3)
    first = statistics.median(v for _, v in p99[:third]) if p99 else None
    last = statistics.median(v for _, v in p99[-third:]) if p99 else None
    ratio = last / first if first and last is not None else None
    span = p99[-1][0] - p99[0][0] if p99 else 0.0
    rise = theil_sen(p99) * span / first if first else None
    trend = ratio is not None and rise is not None and ratio > P99_RATIO_LIMIT and rise > P99_SLOPE_LIMIT
    checks["p99"] = {"first_third_ms": _round(first), "last_third_ms": _round(last), "ratio": _round(ratio, 3),
                     "ratio_limit": P99_RATIO_LIMIT, "slope_rise_pct": _round(rise and 100 * rise, 1),
                     "slope_limit_pct": 100 * P99_SLOPE_LIMIT, "ok": not trend and bool(p99)}
    if not p99:
        failures.append("no end-to-end latency observed after the warm-up")
    elif trend:
        failures.append(f"p99 trends upward: last third {last:.0f} ms vs first third {first:.0f} ms "
                        f"(x{ratio:.2f} > x{P99_RATIO_LIMIT}) and the slope adds {100 * (rise or 0):+.0f} % "
                        f"over {span:.0f} s (> +{100 * P99_SLOPE_LIMIT:.0f} %)")

    fps = [s.fps for s in post if s.fps is not None]
    checks["fps"] = {"first_third": _round(statistics.median(fps[:third]) if fps else None, 2),
                     "last_third": _round(statistics.median(fps[-third:]) if fps else None, 2),
                     "min": _round(min(fps, default=None), 2),
                     "mean": _round(statistics.fmean(fps) if fps else None, 2)}
    stalled = [s.t_s for s in samples if s.frames == 0]
    if stalled:
        failures.append(f"no frame processed in the interval(s) ending at {', '.join(f'{t:.0f}' for t in stalled)} s")
    missing = [s.t_s for s in samples if s.frames is None]
    checks["metrics"] = {"failed_scrapes": len(missing), "ok": not missing}
    if missing:
        failures.append(f"/metrics did not answer at {', '.join(f'{t:.0f}' for t in missing)} s")
    received = sum(s.msgs for s in post)
    processed = sum(s.frames or 0 for s in post)
    delivered = received >= MQTT_DELIVERY_MIN * processed
    checks["mqtt"] = {"received": received, "processed": processed, "ok": delivered}
    if not delivered:
        failures.append(f"only {received} MQTT detections messages received for {processed} frames processed "
                        f"after the warm-up (< {100 * MQTT_DELIVERY_MIN:.0f} %)")
    load = [s.load1 for s in post]
    checks["load1"] = {"first_third": _round(statistics.median(load[:third]), 2),
                       "last_third": _round(statistics.median(load[-third:]), 2), "max": max(load)}
    checks["pass"] = not failures
    checks["failures"] = failures
    return checks


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_pid(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, bool]:
    """SIGTERM by PID, wait; SIGKILL after ``timeout``. (exit code, seconds, stopped in time)."""
    t0 = time.monotonic()
    if proc.poll() is not None:
        return proc.returncode, 0.0, True
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout)
        return code, time.monotonic() - t0, True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10), time.monotonic() - t0, False


def start_mosquitto(workdir: Path, stop: threading.Event) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise Usage("mosquitto is not installed (apt-get install mosquitto) and no --broker was given")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} {LOOPBACK}\nallow_anonymous true\npersistence false\n"
                    f"log_dest file {workdir / 'mosquitto.log'}\nuser {pwd.getpwuid(os.getuid()).pw_name}\n")
    with open(workdir / "mosquitto.stderr", "wb") as err:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    deadline = time.monotonic() + 10
    while not port_open(LOOPBACK, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc, 5)
            raise RuntimeError(f"mosquitto did not come up on {LOOPBACK}:{port} (see {workdir})")
        stop.wait(0.1)
    return proc, port


def write_config(args: argparse.Namespace, workdir: Path, broker: tuple[str, int], metrics_port: int) -> Path:
    cameras: dict[str, Any] = {MAIN_CAMERA: {"url": str(args.clip), "loop": True, "realtime": False}}
    if args.realtime_camera:
        cameras[LIVE_CAMERA] = {"url": str(args.clip), "loop": True, "realtime": True}
    state = workdir / "state"
    state.mkdir(exist_ok=True)
    cfg = {
        "node_id": "soak",
        "log_level": "INFO",
        "state_dir": str(state),
        "cameras": cameras,
        "model": {"path": str(args.model)},
        "mqtt": {"host": broker[0], "port": broker[1], "publish_empty": True},
        "metrics": {"host": LOOPBACK, "port": metrics_port},
    }
    path = workdir / "edgedet.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(FileNotFoundError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="measured time after the first frame (default 10)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds after the first frame before the baseline sample (default 60)")
    ap.add_argument("--broker", default=None, metavar="HOST:PORT",
                    help="use this MQTT broker instead of starting mosquitto on a free loopback port")
    ap.add_argument("--realtime-camera", action="store_true",
                    help="add a second camera: the same clip paced at its frame rate (25 fps)")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help=f"video file (default {DEFAULT_CLIP})")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="write samples and verdict here")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="config, logs and state here (default: a new temp dir, removed after a pass)")
    ap.add_argument("--startup-timeout", type=float, default=300.0,
                    help="seconds to wait for the first processed frame (default 300)")
    args = ap.parse_args(argv)
    if args.interval <= 0 or args.minutes <= 0 or args.warmup < 0:
        ap.error("--minutes and --interval must be > 0, --warmup >= 0")
    if (args.minutes * 60 - args.warmup) / args.interval + 1 < MIN_POST_SAMPLES:
        ap.error(f"--minutes {args.minutes:g} with --warmup {args.warmup:g} and --interval {args.interval:g} "
                 f"leaves fewer than {MIN_POST_SAMPLES} samples after the warm-up")
    if args.broker is not None:
        host, sep, port = args.broker.rpartition(":")
        if not sep or not host or not port.isdigit():
            ap.error(f"--broker: expected HOST:PORT (got {args.broker!r})")
        args.broker = (host, int(port))
    for what, path in (("clip", args.clip), ("model", args.model)):
        if not path.is_file():
            hint = " (make assets)" if what == "clip" else " (make model)"
            ap.error(f"--{what}: file not found: {path}{hint}")
    args.clip, args.model = args.clip.resolve(), args.model.resolve()
    return args


def wait_first_frame(proc: subprocess.Popen[bytes], port: int, stop: threading.Event, timeout: float) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with code {proc.returncode} before processing a frame")
        with contextlib.suppress(OSError, ValueError):
            first = scrape(port)
            if first.processed > 0:
                return first
        if time.monotonic() > deadline:
            raise RuntimeError(f"no frame processed within {timeout:g} s of the start")
        if stop.wait(0.5):
            raise RuntimeError("interrupted before the first frame")


HEADER = (f"{'t[s]':>6} {'rss[MiB]':>9} {'thr':>4} {'fds':>4} {'fps':>6} {'msgs':>5} {'p99[ms]':>8} "
          f"{'p99h':>6} {'drop':>5} {'load1':>6}")


def row(s: Sample) -> str:
    return (f"{s.t_s:6.0f} {s.rss_mib:9.1f} {s.threads:4d} {s.fds:4d} {_fmt(s.fps, '.2f'):>6} {s.msgs:5d} "
            f"{_fmt(s.p99_ms):>8} {_fmt(s.p99h_ms):>6} {_fmt(s.dropped, 'd'):>5} {s.load1:6.2f}")


def soak(args: argparse.Namespace, workdir: Path, stop: threading.Event, result: dict[str, Any]) -> None:
    """Start broker + daemon, sample, stop; fills ``result`` (samples, exit, errors) as it goes."""
    samples: list[Sample] = result["samples"]
    broker_proc: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    sub: LatencySubscriber | None = None
    log_path = workdir / "daemon.log"
    try:
        if args.broker is None:
            broker_proc, port = start_mosquitto(workdir, stop)
            broker = (LOOPBACK, port)
            print(f"soak: mosquitto pid {broker_proc.pid} on {LOOPBACK}:{port}", flush=True)
        else:
            broker = args.broker
        sub = LatencySubscriber(broker, "edgedet/soak/+/detections")
        metrics_port = free_port()
        cfg = write_config(args, workdir, broker, metrics_port)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        with open(log_path, "wb") as log_file:
            daemon = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "-c", str(cfg)], cwd=REPO, env=env,
                                      stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        print(f"soak: daemon pid {daemon.pid}, metrics :{metrics_port}, config {cfg}, log {log_path}", flush=True)
        prev = wait_first_frame(daemon, metrics_port, stop, args.startup_timeout)
        t0 = prev_t = time.monotonic()
        sub.take()
        print(f"soak: first frame after start; sampling every {args.interval:g} s for {args.minutes:g} min "
              f"(baseline at {args.warmup:g} s)\n{HEADER}", flush=True)
        for k in itertools.count(1):
            due = t0 + k * args.interval
            if due > t0 + args.minutes * 60 + 1e-6:
                break
            if stop.wait(max(0.0, due - time.monotonic())):
                result["errors"].append("interrupted")
                break
            if daemon.poll() is not None:
                result["errors"].append(f"the daemon exited with code {daemon.returncode} during the soak")
                break
            if broker_proc is not None and broker_proc.poll() is not None:
                result["errors"].append(f"mosquitto exited with code {broker_proc.returncode} during the soak")
                break
            try:
                rss, threads, fds = proc_stats(daemon.pid)
            except OSError as exc:
                result["errors"].append(f"cannot read /proc/{daemon.pid}: {exc}")
                break
            now = time.monotonic()
            try:
                cur: Scrape | None = scrape(metrics_port)
            except (OSError, ValueError):
                cur = None
            latencies = sub.take()
            frames = fps = p99h = dropped = None
            if cur is not None:
                frames = int(cur.processed - prev.processed)
                fps = frames / (now - prev_t)
                q = quantile(0.99, delta(cur.buckets, prev.buckets))
                p99h = None if q is None else 1000 * q
                dropped = int(cur.dropped - prev.dropped)
                result["dropped_main"] += int(cur.dropped_main - prev.dropped_main)
                prev, prev_t = cur, now
            p99 = nearest_rank(0.99, latencies)
            sample = Sample(round(now - t0, 1), rss, threads, fds, frames, fps, len(latencies),
                            p99h if p99 is None else p99, p99h, dropped, os.getloadavg()[0])
            samples.append(sample)
            print(row(sample), flush=True)
    finally:
        if daemon is not None:
            code, seconds, in_time = stop_pid(daemon, STOP_TIMEOUT_S)
            result["exit"] = {"code": code, "seconds": round(seconds, 2), "in_time": in_time,
                              "ok": code == 0 and in_time}
            print(f"soak: SIGTERM -> daemon exit {code} after {seconds:.1f} s"
                  + ("" if in_time else " (SIGKILLed: did not stop in time)"), flush=True)
            if code != 0 or not in_time:
                print(f"--- last lines of {log_path}\n{tail(log_path)}", file=sys.stderr)
        if sub is not None:
            result["bad_messages"] = sub.bad
            sub.stop()
        if broker_proc is not None:
            stop_pid(broker_proc, 10)


def report(verdict: dict[str, Any]) -> None:
    if "rss" not in verdict:
        return
    rss, p99, fps, load = verdict["rss"], verdict["p99"], verdict["fps"], verdict["load1"]
    print(f"rss      {rss['start_mib']:.1f} MiB at start, baseline {rss['baseline_mib']:.1f} MiB at "
          f"{verdict['baseline_t_s']:.0f} s -> {rss['end_mib']:.1f} MiB at the end ({rss['growth_pct']:+.1f} %, "
          f"limit +{rss['limit_pct']:.0f} %)")
    for key in ("threads", "fds"):
        c = verdict[key]
        print(f"{key:<8} baseline {c['baseline']} -> end {c['end']} (range {c['min']}..{c['max']} "
              f"after warm-up, tolerance +{c['tolerance']})")
    print(f"p99      first third {_fmt(p99['first_third_ms'])} ms, last third {_fmt(p99['last_third_ms'])} ms "
          f"(x{_fmt(p99['ratio'], '.2f')}, limit x{p99['ratio_limit']}); Theil-Sen slope "
          f"{_fmt(p99['slope_rise_pct'], '+.1f')} % over the run (limit +{p99['slope_limit_pct']:.0f} %; "
          f"fails only when both exceed)")
    print(f"fps      first third {_fmt(fps['first_third'], '.2f')}, last third {_fmt(fps['last_third'], '.2f')}, "
          f"min {_fmt(fps['min'], '.2f')}, mean {_fmt(fps['mean'], '.2f')}")
    if "mqtt" in verdict:
        print(f"mqtt     {verdict['mqtt']['received']} detections messages for {verdict['mqtt']['processed']} "
              "frames processed after the warm-up")
    print(f"load1    first third {load['first_third']}, last third {load['last_third']}, max {load['max']:.2f} "
          f"({os.cpu_count()} CPUs)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # exits 2 on bad arguments or a missing clip / model
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        print(f"soak: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgedet-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"samples": [], "errors": [], "dropped_main": 0, "exit": None}
    started_load = os.getloadavg()
    try:
        soak(args, workdir, stop, result)
    except Usage as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        result["errors"].append(str(exc))
        print(f"soak: {exc}\n--- last lines of {workdir / 'daemon.log'}\n{tail(workdir / 'daemon.log')}",
              file=sys.stderr)

    samples: list[Sample] = result["samples"]
    verdict = judge(samples, args.warmup)
    verdict["failures"] = result["errors"] + verdict["failures"]
    verdict["dropped_main"] = result["dropped_main"]
    if result["dropped_main"]:
        verdict["failures"].append(f"camera {MAIN_CAMERA} (realtime: false) dropped {result['dropped_main']} frame(s)")
    verdict["bad_messages"] = result.get("bad_messages", 0)
    if verdict["bad_messages"]:
        verdict["failures"].append(f"{verdict['bad_messages']} MQTT message(s) without latency_ms.capture_to_publish")
    verdict["exit"] = result["exit"]
    if result["exit"] is not None and not result["exit"]["ok"]:
        verdict["failures"].append(f"daemon did not exit 0 on SIGTERM: {result['exit']}")
    elif result["exit"] is None:
        verdict["failures"].append("the daemon was never started")
    verdict["pass"] = not verdict["failures"]
    report(verdict)
    for failure in verdict["failures"]:
        print(f"FAIL: {failure}")
    print(f"VERDICT: {'PASS' if verdict['pass'] else 'FAIL'}", flush=True)
    if args.json is not None:
        out = {
            "args": {"minutes": args.minutes, "interval": args.interval, "warmup": args.warmup,
                     "broker": None if args.broker is None else f"{args.broker[0]}:{args.broker[1]}",
                     "realtime_camera": args.realtime_camera, "clip": str(args.clip), "model": str(args.model)},
            "cpus": os.cpu_count(),
            "load_avg_start": started_load,
            "load_avg_end": os.getloadavg(),
            "samples": [asdict(s) for s in samples],
            "verdict": verdict,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if verdict["pass"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not verdict["pass"]:
        print(f"soak: logs kept in {workdir}", file=sys.stderr)
    return 0 if verdict["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
