"""``edgedet bench``: raw model vs the edgedet pipeline vs Ultralytics, and live latency, on this box.

Every measurement runs in a child process (``python -m edgedet.bench --child KIND ...``), one at
a time. torch's thread settings are process-wide (and importing ultralytics changes them), and
two torch processes at once on a small box slow each other down many times over, so the parent
imports neither torch nor ultralytics and never runs two children together.

Repeats run in rounds -- per round: raw layouts + pipeline (one child), then each Ultralytics row
(one child each) -- so slow drift of the machine hits every row alike; each row reports the
median over rounds. Throughput is measured result to result: ``(n - 1) / (t_last - t_first)``
over the ``n`` frames, for the pipeline and for Ultralytics alike (model loading, warm-up and the
first frame's latency are excluded from both).

Sections: ``raw`` (forward only), ``pipeline`` (FrameHub + CaptureWorker + InferenceWorker on the
file with back-pressure, counting sink, no MQTT), ``ultralytics`` (``YOLO(...).predict(stream=True)``),
``live`` (a real-time 25 fps source: end-to-end latency, frame age, drops, per-stage medians),
``rect`` (optional aspect-matched model), ``ratios`` and ``targets``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from edgedet.errors import EdgedetError, InputError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ".cache/demo/demo.mp4"
DEFAULT_MODEL = "models/demo.torchscript"
DEFAULT_WEIGHTS = ".cache/demo-model/best.pt"
RTSP_SCRIPT = "scripts/rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
CAMERA = "bench"
LIVE_FPS = 25
WARMUP_CALLS = 2  # forwards per new thread before timing (OpenMP team start; the detector warmed up already)

# Targets (printed, never asserted by tests).
TARGET_PIPELINE_VS_RAW = 0.95
TARGET_VS_ULTRA_TORCHSCRIPT = 1.5
TARGET_VS_ULTRA_PT = 1.2
TARGET_LIVE_P50_SLACK_MS = 15.0


class BenchError(EdgedetError):
    """A measurement child failed (exit 1)."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class Options:
    video: Path
    model: Path
    model_rect: Path | None
    weights: Path | None
    frames: int | None  # video frames for pipeline / Ultralytics rows (None: all)
    repeats: int
    raw_iters: int
    live_seconds: float
    live_warmup_s: float
    live_source: str  # auto | rtsp | file
    live_frames: Path | None  # JPEG sequence for the RTSP test server
    ultralytics: bool
    ultra_default_threads: bool  # also run Ultralytics at its own thread setting
    workers: int | None
    threads: int | None
    queue_size: int
    quick: bool
    json_path: Path | None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgedet bench",
        description="Raw model vs edgedet pipeline vs Ultralytics throughput, and live latency, on this machine. "
        "Runs every measurement in its own process, one at a time.",
    )
    ap.add_argument("--video", default=None, help=f"video file (default {DEFAULT_VIDEO})")
    ap.add_argument("--model", default=None, help=f"TorchScript model (default {DEFAULT_MODEL})")
    ap.add_argument("--model-rect", default=None, metavar="PATH",
                    help="an aspect-matched export (edgedet export --rect 16:9) to compare with --model")
    ap.add_argument("--weights", default=None,
                    help=f"Ultralytics .pt checkpoint for the .pt row (default {DEFAULT_WEIGHTS} when present)")
    ap.add_argument("--frames", type=int, default=None, help="video frames per pipeline/Ultralytics run (default all)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds; rows report the median (default 3)")
    ap.add_argument("--raw-iters", type=int, default=None, help="forwards per raw layout per round (default 40)")
    ap.add_argument("--live-seconds", type=float, default=None, help="live measurement window (default 20)")
    ap.add_argument("--live-source", choices=["auto", "rtsp", "file"], default="auto",
                    help="auto: the GStreamer RTSP test server when available, else the file paced at its fps")
    ap.add_argument("--live-frames", default=None, metavar="DIR",
                    help="JPEG sequence served over RTSP (default: frames/ next to the demo clip)")
    ap.add_argument("--no-ultralytics", action="store_true", help="skip the Ultralytics rows")
    ap.add_argument("--workers", type=int, default=None, help="inference workers (default: thread_layout)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: thread_layout)")
    ap.add_argument("--queue-size", type=int, default=None, help="camera queue size (default: config default)")
    ap.add_argument("--quick", action="store_true",
                    help="few frames, 1 round, short live window, Ultralytics only at forced threads (for tests)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the full results as JSON")
    return ap


def _find(path: str | None, default: str, what: str, hint: str) -> Path:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{what} {p}: no such file")
        return p
    for base in (Path.cwd(), REPO):
        if (base / default).is_file():
            return base / default
    raise InputError(f"{what}: {default} not found; {hint}")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InputError(f"{name} must be > 0 (got {value})")


def resolve_options(args: argparse.Namespace) -> Options:
    for name in ("frames", "repeats", "raw_iters", "live_seconds", "workers", "threads", "queue_size"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    video = _find(args.video, DEFAULT_VIDEO, "video", "make it with `scripts/make_clip.py --out-dir .cache/demo`")
    model = _find(args.model, DEFAULT_MODEL, "model", "export it with `make model`")
    model_rect = _find(args.model_rect, "", "--model-rect", "") if args.model_rect else None
    if args.weights is not None:
        weights: Path | None = _find(args.weights, DEFAULT_WEIGHTS, "weights", "")
    else:
        weights = next((b / DEFAULT_WEIGHTS for b in (Path.cwd(), REPO) if (b / DEFAULT_WEIGHTS).is_file()), None)
    live_frames = Path(args.live_frames) if args.live_frames else video.parent / "frames"
    quick = bool(args.quick)
    from edgedet.config import CameraConfig

    queue_default = next(f.default for f in fields(CameraConfig) if f.name == "queue_size")
    if not isinstance(queue_default, int):
        queue_default = 1
    return Options(
        video=video,
        model=model,
        model_rect=model_rect,
        weights=weights,
        frames=args.frames if args.frames is not None else (16 if quick else None),
        repeats=args.repeats or (1 if quick else 3),
        raw_iters=args.raw_iters or (6 if quick else 40),
        live_seconds=args.live_seconds or (4.0 if quick else 20.0),
        live_warmup_s=1.0 if quick else 2.0,
        live_source=args.live_source,
        live_frames=live_frames if (live_frames / "00000.jpg").is_file() else None,
        ultralytics=not args.no_ultralytics,
        ultra_default_threads=not quick,
        workers=args.workers,
        threads=args.threads,
        queue_size=int(args.queue_size or queue_default),
        quick=quick,
        json_path=Path(args.json) if args.json else None,
    )


# --------------------------------------------------------------------------- entry points


def main(argv: Sequence[str] | None = None) -> int:
    """``edgedet bench`` / ``scripts/bench.py``: run, print the table, write ``--json``."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        from edgedet.logs import setup_logging

        setup_logging("INFO")
    try:
        opts = resolve_options(args)
        report = run_bench(opts)
    except EdgedetError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    print(format_report(report), flush=True)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", opts.json_path)
    return 0


def run_bench(opts: Options) -> dict[str, Any]:
    from edgedet.model.torchscript import read_metadata  # no torch

    info = read_metadata(opts.model)
    rect_info = read_metadata(opts.model_rect) if opts.model_rect else None
    started = time.monotonic()
    load_start = _loadavg()
    machine = _machine_info()
    _warn_if_busy(machine["cores"])
    cpu_start = _cpu_snapshot()
    base_spec = {
        "video": str(opts.video),
        "frames": opts.frames,
        "workers": opts.workers,
        "threads": opts.threads,
        "queue_size": opts.queue_size,
        "raw_iters": opts.raw_iters,
    }
    ultra_rows = _ultra_rows(opts, info.imgsz, machine["cores"]) if opts.ultralytics else []
    ultra_note = None
    if opts.ultralytics and not _has_module("ultralytics"):
        ultra_rows, ultra_note = [], "ultralytics is not installed: rows skipped"
    elif not opts.ultralytics:
        ultra_note = "skipped (--no-ultralytics)"

    edge_runs: list[dict[str, Any]] = []
    rect_runs: list[dict[str, Any]] = []
    ultra_runs: dict[str, list[dict[str, Any]]] = {r["name"]: [] for r in ultra_rows}
    ultra_errors: dict[str, str] = {}
    for rnd in range(opts.repeats):
        log.info("round %d/%d: raw + pipeline (%s)", rnd + 1, opts.repeats, opts.model.name)
        edge_runs.append(_child("edge", {**base_spec, "model": str(opts.model)}, timeout=_edge_timeout(opts)))
        if opts.model_rect is not None:
            log.info("round %d/%d: raw + pipeline (%s)", rnd + 1, opts.repeats, opts.model_rect.name)
            rect_runs.append(_child("edge", {**base_spec, "model": str(opts.model_rect)}, timeout=_edge_timeout(opts)))
        for row in ultra_rows:
            if row["name"] in ultra_errors:
                continue
            log.info("round %d/%d: ultralytics %s", rnd + 1, opts.repeats, row["name"])
            env = {"OMP_NUM_THREADS": str(row["threads"])} if row["threads"] else {}
            try:
                ultra_runs[row["name"]].append(
                    _child("ultra", {**row, "video": str(opts.video), "frames": opts.frames},
                           timeout=_ultra_timeout(opts), env=env)
                )
            except BenchError as exc:
                log.warning("ultralytics %s failed: %s", row["name"], exc)
                ultra_errors[row["name"]] = str(exc)

    live = _run_live(opts)
    report: dict[str, Any] = {
        "machine": {**machine, **_torch_info(edge_runs[0]), "loadavg_start": load_start, "loadavg_end": _loadavg(),
                    "other_cpu_pct": _other_cpu_pct(cpu_start, _cpu_snapshot(), machine["cores"])},
        "config": {
            "video": str(opts.video),
            "video_size": edge_runs[0]["video_size"],
            "model": str(opts.model),
            "model_imgsz": list(info.imgsz),
            "frames": opts.frames,
            "repeats": opts.repeats,
            "raw_iters": opts.raw_iters,
            "live_seconds": opts.live_seconds,
            "quick": opts.quick,
            "children_env": "OMP_NUM_THREADS removed (set only for forced-thread Ultralytics rows)",
        },
        "raw": _summarise_raw(edge_runs),
        "pipeline": _summarise_pipeline(edge_runs),
        "diagnostics": _summarise_diag(edge_runs),
        "ultralytics": _summarise_ultra(ultra_rows, ultra_runs, ultra_errors, ultra_note),
        "live": live,
        "rect": None,
    }
    if rect_info is not None and rect_runs:
        report["rect"] = _summarise_rect(report, rect_runs, str(opts.model_rect), rect_info.imgsz)
    report["ratios"], report["targets"] = _ratios_and_targets(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


# --------------------------------------------------------------------------- children (parent side)


def _child(kind: str, spec: dict[str, Any], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement child and return its JSON result; BenchError with its stderr tail on failure."""
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    child_env["YOLO_OFFLINE"] = "1"
    child_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="edgedet-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "edgedet.bench", "--child", kind, json.dumps(spec), str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env)
        except subprocess.TimeoutExpired:
            raise BenchError(f"bench child {kind} did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-4:])
            raise BenchError(f"bench child {kind} failed (exit {proc.returncode}): {tail}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _edge_timeout(opts: Options) -> float:
    frames = opts.frames or 1000
    return 180.0 + frames * 1.5 + opts.raw_iters * 5 * 2.0


def _ultra_timeout(opts: Options) -> float:
    return 180.0 + (opts.frames or 1000) * 2.0


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _ultra_rows(opts: Options, imgsz: tuple[int, int], cores: int) -> list[dict[str, Any]]:
    """Ultralytics configurations: TorchScript file (square) and the .pt checkpoint (rect letterbox)."""
    rows = []
    targets: list[tuple[str, str, Any, bool]] = [("torchscript", str(opts.model), list(imgsz), False)]
    if opts.weights is not None:
        targets.append(("pt", str(opts.weights), max(imgsz), True))
    for kind, weights, size, rect in targets:
        thread_opts: list[int | None] = ([None] if opts.ultra_default_threads else []) + [cores]
        for threads in thread_opts:
            label = "default threads" if threads is None else f"{threads} threads"
            rows.append({"name": f"{kind} {label}", "format": kind, "weights": weights, "imgsz": size,
                         "rect": rect, "threads": threads})
    return rows


def _run_live(opts: Options) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": str(opts.model),
        "seconds": opts.live_seconds,
        "warmup_s": opts.live_warmup_s,
        "workers": opts.workers,
        "threads": opts.threads,
        "queue_size": opts.queue_size,
    }
    script = REPO / RTSP_SCRIPT
    want_rtsp = opts.live_source in ("auto", "rtsp")
    why_not = _rtsp_unavailable(script, opts.live_frames) if want_rtsp else "--live-source file"
    if opts.live_source == "rtsp" and why_not:
        raise InputError(f"--live-source rtsp: {why_not}")
    timeout = 120.0 + opts.live_seconds + opts.live_warmup_s
    if why_not is None:
        assert opts.live_frames is not None
        with _RtspServer(script, opts.live_frames) as (url, pid):
            log.info("live: %s for %g s", url, opts.live_seconds)
            cpu0, t0 = _proc_cpu_s(pid), time.monotonic()
            result = _child("live", {**spec, "source": "rtsp", "url": url}, timeout=timeout)
            cpu1, t1 = _proc_cpu_s(pid), time.monotonic()
        result["source"] = "rtsp"
        result["source_detail"] = f"GStreamer RTSP test server ({RTSP_SCRIPT}, {LIVE_FPS} fps H.264, same box)"
        if cpu0 is not None and cpu1 is not None:
            result["rtsp_server_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / max(t1 - t0, 1e-9), 1)
    else:
        log.info("live: %s paced at its fps for %g s (RTSP not used: %s)", opts.video, opts.live_seconds, why_not)
        result = _child("live", {**spec, "source": "file", "url": str(opts.video)}, timeout=timeout)
        result["source"] = "file"
        result["source_detail"] = f"file with realtime pacing, looped (RTSP not used: {why_not})"
    return result


def _rtsp_unavailable(script: Path, frames: Path | None) -> str | None:
    if not script.is_file():
        return f"{script} not found"
    if frames is None:
        return "no JPEG sequence (frames/00000.jpg next to the video, or --live-frames)"
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True, timeout=30,
    )
    return None if probe.returncode == 0 else f"{SYSTEM_PYTHON} lacks PyGObject/GstRtspServer"


class _RtspServer:
    """The GStreamer RTSP test server on a kernel-picked port; stopped by PID on exit."""

    def __init__(self, script: Path, frames: Path) -> None:
        self.cmd = [SYSTEM_PYTHON, str(script), "--port", "0", "--frames", str(frames), "--fps", str(LIVE_FPS)]
        self._tmp = tempfile.TemporaryDirectory(prefix="edgedet-bench-rtsp-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> tuple[str, int]:
        out_path = Path(self._tmp.name) / "stdout"
        with open(out_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30.0
        while True:
            text = out_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    return line.split()[1], self.proc.pid
            try:
                code = self.proc.wait(timeout=0.05)  # also the bounded wait between looks
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise BenchError("RTSP test server printed no READY line within 30 s") from None
                continue
            tail = " | ".join(text.strip().splitlines()[-3:])
            self.__exit__()
            raise BenchError(f"RTSP test server exited with code {code}: {tail}")

    def __exit__(self, *_exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._tmp.cleanup()


def _proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process and its waited-for children (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parts = stat.rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in parts[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count() or 1,
        "cores_usable": usable,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def _torch_info(edge: dict[str, Any]) -> dict[str, Any]:
    return {k: edge[k] for k in ("torch", "opencv", "torch_default_threads")} | {
        "ultralytics": _module_version("ultralytics")
    }


def _module_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(monotonic s, busy CPU s of the whole machine, CPU s of this process and its waited-for children)."""
    try:
        fields_ = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields_
    t = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def _other_cpu_pct(
    start: tuple[float, float, float] | None, end: tuple[float, float, float] | None, cores: int
) -> float | None:
    """CPU used by processes other than the bench and its children, in % of the whole machine."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    other = (end[1] - start[1]) - (end[2] - start[2])
    return round(max(0.0, 100.0 * other / ((end[0] - start[0]) * cores)), 1)


def _warn_if_busy(cores: int, probe_s: float = 1.0) -> None:
    start = _cpu_snapshot()
    threading.Event().wait(probe_s)  # a bounded pause to sample /proc/stat over
    busy = _other_cpu_pct(start, _cpu_snapshot(), cores)
    if busy is not None and busy > 10.0:
        log.warning("other processes are using %.0f%% of the CPU right now: the numbers will be noisy", busy)


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


# --------------------------------------------------------------------------- summaries


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _summarise_raw(runs: list[dict[str, Any]]) -> dict[str, Any]:
    layouts = []
    for i, first in enumerate(runs[0]["raw"]):
        per_round = [run["raw"][i] for run in runs]
        img_s = _median([r["img_s"] for r in per_round])
        layouts.append({
            "name": first["name"],
            "workers": first["workers"],
            "threads": first["threads"],
            "where": first["where"],
            "threads_observed": sorted({t for r in per_round for t in r["threads_observed"]}),
            "img_s": _r(img_s),
            "ms_img": _r(1000.0 / img_s, 2),
            "img_s_robust": _r(_median([r["img_s_robust"] for r in per_round])),
            "call_ms": _r(_median([r["call_ms"] for r in per_round]), 2),
            "runs_img_s": [_r(r["img_s"]) for r in per_round],
            "iters": first["iters"],
        })
    best = max(layouts, key=lambda row: row["img_s"])
    return {
        "method": "TorchScriptDetector.infer() on one preprocessed frame (channels_last model), "
                  "median over rounds",
        "imgsz": runs[0]["imgsz"],
        "layouts": layouts,
        "best": {k: best[k] for k in ("name", "workers", "threads", "where", "img_s", "ms_img")},
    }


def _stage_medians(runs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    names = runs[0][key].keys()
    return {n: _r(_median([run[key][n] for run in runs]), 2) for n in names}


def _summarise_pipeline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pipes = [run["pipeline"] for run in runs]
    fps = _median([p["fps"] for p in pipes])
    return {
        "method": "FrameHub + CaptureWorker(file, realtime=False, back-pressure) + InferenceWorker(s) "
                  "+ counting sink, real Metrics, no MQTT; (n-1)/(t_last-t_first) over all frames",
        "workers": pipes[0]["workers"],
        "threads": pipes[0]["threads"],
        "threads_observed": sorted({t for p in pipes for t in p["threads_observed"]}),
        "queue_size": pipes[0]["queue_size"],
        "frames": pipes[0]["frames"],
        "fps": _r(fps),
        "ms_frame": _r(1000.0 / fps, 2),
        "fps_robust": _r(_median([p["fps_robust"] for p in pipes])),
        "runs_fps": [_r(p["fps"]) for p in pipes],
        "stages_ms": _stage_medians(pipes, "stages_ms"),
    }


def _summarise_diag(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "method": "serial per-frame costs outside the forward, main thread, nothing else running in the process",
        **_stage_medians(runs, "diag_ms"),
    }


def _summarise_ultra(
    rows: list[dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    note: str | None,
) -> dict[str, Any]:
    out_rows = []
    for row in rows:
        got = runs.get(row["name"]) or []
        if not got:
            out_rows.append({**row, "error": errors.get(row["name"], "not measured")})
            continue
        fps = _median([g["fps"] for g in got])
        out_rows.append({
            "name": row["name"],
            "format": row["format"],
            "weights": row["weights"],
            "threads_requested": row["threads"],
            "threads_observed": sorted({t for g in got for t in g["threads_observed"]}),
            "input_shape": got[0]["input_shape"],
            "frames": got[0]["frames"],
            "fps": _r(fps),
            "ms_frame": _r(1000.0 / fps, 2),
            "fps_robust": _r(_median([g["fps_robust"] for g in got])),
            "inference_ms": _r(_median([g["inference_ms"] for g in got]), 2),
            "runs_fps": [_r(g["fps"]) for g in got],
        })

    def best(fmt: str) -> dict[str, Any] | None:
        ok = [r for r in out_rows if r.get("format") == fmt and r.get("fps")]
        return max(ok, key=lambda r: r["fps"]) if ok else None

    return {
        "available": bool(out_rows) and any("fps" in r for r in out_rows),
        "note": note,
        "method": "YOLO(weights).predict(source=video, stream=True, imgsz=..., verbose=False), own process; "
                  "(n-1)/(t_last-t_first) over all frames",
        "rows": out_rows,
        "best_torchscript": _pick(best("torchscript")),
        "best_pt": _pick(best("pt")),
    }


def _pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("name", "fps", "threads_observed", "input_shape")}


def _summarise_rect(
    report: dict[str, Any], runs: list[dict[str, Any]], path: str, imgsz: Sequence[int]
) -> dict[str, Any]:
    raw = _summarise_raw(runs)
    pipe = _summarise_pipeline(runs)
    return {
        "model": path,
        "imgsz": list(imgsz),
        "raw": raw,
        "pipeline": pipe,
        "speedup_raw": _ratio(raw["best"]["img_s"], report["raw"]["best"]["img_s"], "rect raw best / square raw best"),
        "speedup_pipeline": _ratio(pipe["fps"], report["pipeline"]["fps"], "rect pipeline / square pipeline"),
    }


def _ratio(a: float | None, b: float | None, what: str) -> dict[str, Any]:
    value = None if a is None or b is None or b == 0 else round(a / b, 3)
    return {"what": what, "a": a, "b": b, "value": value}


def _ratios_and_targets(report: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pipe = report["pipeline"]["fps"]
    ultra = report["ultralytics"]
    ts, pt = ultra["best_torchscript"], ultra["best_pt"]
    ratios = {
        "pipeline_vs_raw": _ratio(pipe, report["raw"]["best"]["img_s"], "pipeline fps / raw best img/s"),
        "pipeline_vs_ultralytics_torchscript": _ratio(
            pipe, ts["fps"] if ts else None, "pipeline fps / Ultralytics TorchScript (best threads) fps"),
        "pipeline_vs_ultralytics_pt": _ratio(
            pipe, pt["fps"] if pt else None, "pipeline fps / Ultralytics .pt best fps"),
    }
    if report.get("rect"):
        ratios["rect_pipeline_vs_ultralytics_pt"] = _ratio(
            report["rect"]["pipeline"]["fps"], pt["fps"] if pt else None,
            "rect pipeline fps / Ultralytics .pt best fps (same input size)")
    live = report["live"]
    p50, inf = live["e2e_ms"]["p50"], live["stages_ms"]["inference"]
    limit = None if inf is None else round(inf + TARGET_LIVE_P50_SLACK_MS, 2)

    def target(name: str, value: float | None, lim: float | None, higher: bool) -> dict[str, Any]:
        ok = None if value is None or lim is None else (value >= lim if higher else value <= lim)
        return {"name": name, "value": value, "limit": lim, "ok": ok}

    targets = [
        target(f"pipeline >= {TARGET_PIPELINE_VS_RAW}x raw best", ratios["pipeline_vs_raw"]["value"],
               TARGET_PIPELINE_VS_RAW, True),
        target(f"pipeline >= {TARGET_VS_ULTRA_TORCHSCRIPT}x Ultralytics TorchScript",
               ratios["pipeline_vs_ultralytics_torchscript"]["value"], TARGET_VS_ULTRA_TORCHSCRIPT, True),
        target(f"pipeline >= {TARGET_VS_ULTRA_PT}x Ultralytics .pt best",
               ratios["pipeline_vs_ultralytics_pt"]["value"], TARGET_VS_ULTRA_PT, True),
        target(f"live p50 <= inference median + {TARGET_LIVE_P50_SLACK_MS:g} ms", p50, limit, False),
    ]
    return ratios, targets


# --------------------------------------------------------------------------- table


def format_report(rep: dict[str, Any]) -> str:
    m, c = rep["machine"], rep["config"]
    lines: list[str] = []
    add = lines.append
    load = m.get("loadavg_start"), m.get("loadavg_end")
    add(f"edgedet bench -- {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), torch {m['torch']} "
        f"(default {m['torch_default_threads']} threads), opencv {m['opencv']}, ultralytics {m['ultralytics'] or '-'}")
    add(f"video {c['video']} ({c['video_size']}), model {Path(c['model']).name} "
        f"{'x'.join(map(str, c['model_imgsz']))}, frames {c['frames'] or 'all'}, {c['repeats']} round(s)"
        + (" [quick]" if c["quick"] else ""))
    other = m.get("other_cpu_pct")
    if load[0] and load[1]:
        busy = other is not None and other > 5.0
        add(f"load average {load[0][0]:.2f} -> {load[1][0]:.2f}; other processes used "
            f"{_fmt(other, 1)}% of the CPU during the run" + ("  (box busy: numbers are noisy)" if busy else ""))

    raw = rep["raw"]
    add("")
    add(f"1. raw forward, {'x'.join(map(str, raw['imgsz']))} channels_last (TorchScriptDetector.infer, one frame)")
    add(f"   {'workers x threads':34} {'img/s':>7} {'ms/img':>7} {'call ms':>8} {'robust':>7}  runs img/s")
    for row in raw["layouts"]:
        add(f"   {_layout(row):34} {row['img_s']:7.2f} {row['ms_img']:7.1f} {row['call_ms']:8.1f} "
            f"{row['img_s_robust']:7.2f}  " + " ".join(f"{v:.2f}" for v in row["runs_img_s"]))
    add(f"   best: {raw['best']['name']} -> {raw['best']['img_s']:.2f} img/s")

    p = rep["pipeline"]
    add("")
    add(f"2. edgedet pipeline (file, back-pressure, queue {p['queue_size']}, {p['workers']} worker x {p['threads']} "
        f"threads, observed {p['threads_observed']}), {p['frames']} frames")
    add(f"   fps {p['fps']:.2f}  ({p['ms_frame']:.1f} ms/frame)  robust {p['fps_robust']:.2f}  runs "
        + " ".join(f"{v:.2f}" for v in p["runs_fps"]))
    add("   stage medians ms: " + _stages(p["stages_ms"]))
    d = rep["diagnostics"]
    add("   serial costs ms: " + _stages({k: v for k, v in d.items() if k != "method"}))

    u = rep["ultralytics"]
    add("")
    add("3. Ultralytics predict(stream=True), own process" + (f" -- {u['note']}" if u["note"] else ""))
    if u["rows"]:
        add(f"   {'row':26} {'input':>9} {'threads':>8} {'fps':>7} {'ms/frame':>9} {'infer ms':>9} {'robust':>7}"
            "  runs fps")
    for row in u["rows"]:
        if "error" in row:
            add(f"   {row['name']:26} error: {row['error']}")
            continue
        shape = "x".join(map(str, row["input_shape"][-2:])) if row["input_shape"] else "?"
        threads = f"{row['threads_requested'] or 'def'}->{','.join(map(str, row['threads_observed']))}"
        add(f"   {row['name']:26} {shape:>9} {threads:>8} {row['fps']:7.2f} "
            f"{row['ms_frame']:9.1f} {row['inference_ms']:9.1f} {row['fps_robust']:7.2f}  "
            + " ".join(f"{v:.2f}" for v in row["runs_fps"]))

    lv = rep["live"]
    add("")
    add(f"4. live: {lv['source_detail']}, {lv['seconds']:g} s, {lv['workers']} worker x {lv['threads']} threads, "
        f"queue {lv['queue_size']}")
    e, a = lv["e2e_ms"], lv["frame_age_ms"]
    add(f"   end-to-end ms p50 {e['p50']:.1f}  p95 {e['p95']:.1f}  p99 {e['p99']:.1f}   "
        f"frame age ms p50 {a['p50']:.1f}  p95 {a['p95']:.1f}  max {a['max']:.1f}")
    add(f"   captured {lv['captured']}  processed {lv['processed']}  dropped {lv['dropped']}  "
        f"drop rate {lv['drop_rate']:.3f}  processed fps {lv['processed_fps']:.2f}"
        + (f"  rtsp server CPU {lv['rtsp_server_cpu_pct']:.0f}%" if lv.get("rtsp_server_cpu_pct") is not None else ""))
    add("   stage medians ms: " + _stages(lv["stages_ms"]))

    rect = rep.get("rect")
    if rect:
        add("")
        add(f"rect model {Path(rect['model']).name} {'x'.join(map(str, rect['imgsz']))}: raw best "
            f"{rect['raw']['best']['img_s']:.2f} img/s ({rect['raw']['best']['name']}), pipeline "
            f"{rect['pipeline']['fps']:.2f} fps; speed-up vs square: raw {_fmt(rect['speedup_raw']['value'])}x, "
            f"pipeline {_fmt(rect['speedup_pipeline']['value'])}x")

    add("")
    add("5. ratios and targets")
    for r in rep["ratios"].values():
        add(f"   {r['what']:62} {_fmt(r['value'])}")
    for t in rep["targets"]:
        verdict = {True: "OK", False: "MISS", None: "n/a"}[t["ok"]]
        add(f"   {t['name']:62} {_fmt(t['value'])} (limit {_fmt(t['limit'])}) {verdict}")
    add(f"   elapsed {rep.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def _layout(row: dict[str, Any]) -> str:
    where = "main thread" if row["where"] == "main" else "Python thread" + ("s" if row["workers"] > 1 else "")
    observed = ",".join(map(str, row["threads_observed"]))
    return f"{row['workers']} x {row['threads']} ({where}; saw {observed})"


def _stages(stages: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_fmt(v, 2)}" for k, v in stages.items())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- children (child side)


def _child_main(argv: Sequence[str]) -> int:
    kind, spec_text, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(spec_text)
    runners: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "edge": _child_edge,
        "ultra": _child_ultra,
        "live": _child_live,
    }
    result = runners[kind](spec)
    Path(out_path).write_text(json.dumps(result))
    return 0


def _percentile(values: Sequence[float], q: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _ms(ns: float) -> float:
    return ns / 1e6


class _LimitedSource:
    """A file ``FrameSource`` that ends after ``limit`` frames (``--frames``); delegates the rest."""

    def __init__(self, inner: Any, limit: int | None) -> None:
        self._inner = inner
        self._limit = limit
        self._grabbed = 0

    @property
    def fps(self) -> float | None:
        fps = self._inner.fps
        return None if fps is None else float(fps)

    @property
    def is_file(self) -> bool:
        return bool(self._inner.is_file)

    def open(self) -> None:
        self._grabbed = 0
        self._inner.open()

    def grab(self) -> bool:
        if self._limit is not None and self._grabbed >= self._limit:
            return False
        ok = bool(self._inner.grab())
        self._grabbed += ok
        return ok

    def retrieve(self) -> Any:
        return self._inner.retrieve()

    def close(self) -> None:
        self._inner.close()


class _Recorder:
    """The counting sink: keeps (sink time, Detections) and the torch threads seen in the worker thread."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.lock = threading.Lock()
        self.events: list[tuple[int, Any]] = []
        self.threads_observed: set[int] = set()
        self.first = threading.Event()

    def __call__(self, dets: Any, frame: Any) -> None:
        now = time.monotonic_ns()
        with self.lock:
            if len(self.threads_observed) < 4:
                self.threads_observed.add(int(self._torch.get_num_threads()))
            self.events.append((now, dets))
        self.first.set()


def _read_frame(video: str, index: int = 0) -> Any:
    import cv2

    cap = cv2.VideoCapture(video)
    try:
        image = None
        for _ in range(index + 1):
            ok, image = cap.read()
            if not ok:
                break
    finally:
        cap.release()
    if image is None:
        raise InputError(f"{video}: cannot read a frame")
    return image


def _child_edge(spec: dict[str, Any]) -> dict[str, Any]:
    import cv2
    import torch

    from edgedet.inference import DecodeOptions, thread_layout
    from edgedet.model import torch_version
    from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads
    from edgedet.preprocess import Preprocessor

    default_threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    count, threads = thread_layout(None, spec["workers"], spec["threads"], throughput=True)  # file, back-pressure
    set_torch_threads(threads)  # as app.run does, before loading
    detector = TorchScriptDetector(spec["model"])
    image = _read_frame(spec["video"])
    pre = Preprocessor(*detector.info.imgsz, dtype=detector.np_dtype,
                       layout=getattr(detector, "input_layout", "nchw"))
    tensor = pre(image)[0].copy()

    layouts: list[tuple[int, int, str]] = [(1, cores, "main"), (1, cores, "thread"), (cores, 1, "thread")]
    if cores >= 4:
        layouts.append((2, cores // 2, "thread"))
    if (count, threads) not in {(w, t) for w, t, _ in layouts}:
        layouts.append((count, threads, "thread"))
    raw = [_raw_layout(detector, tensor, w, t, where, spec["raw_iters"]) for w, t, where in dict.fromkeys(layouts)]

    set_torch_threads(threads)
    diag = _diag(detector, pre, image, spec["video"])
    pipeline = _pipeline_file(detector, spec, count, threads, DecodeOptions())
    return {
        "torch": torch_version(),
        "opencv": cv2.__version__,
        "torch_default_threads": default_threads,
        "imgsz": list(detector.info.imgsz),
        "video_size": f"{image.shape[1]}x{image.shape[0]}",
        "raw": raw,
        "diag_ms": diag,
        "pipeline": pipeline,
    }


def _raw_layout(detector: Any, tensor: Any, workers: int, threads: int, where: str, iters: int) -> dict[str, Any]:
    import torch

    from edgedet.model.torchscript import set_torch_threads

    lock = threading.Lock()
    remaining = [iters]
    calls: list[float] = []
    observed: set[int] = set()
    errors: list[BaseException] = []

    def loop() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t = time.perf_counter()
            detector.infer(tensor)
            dt = time.perf_counter() - t
            with lock:
                calls.append(dt)

    def setup() -> None:
        set_torch_threads(threads)
        with lock:
            observed.add(int(torch.get_num_threads()))
        for _ in range(WARMUP_CALLS):
            detector.infer(tensor)

    if where == "main":
        setup()
        t0 = time.perf_counter()
        loop()
        elapsed = time.perf_counter() - t0
    else:
        barrier = threading.Barrier(workers + 1)

        def body() -> None:
            try:
                setup()
                barrier.wait(timeout=300)
                loop()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                barrier.abort()

        pool = [threading.Thread(target=body, name=f"bench-raw:{i}", daemon=True) for i in range(workers)]
        for t in pool:
            t.start()
        try:
            barrier.wait(timeout=300)
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
    img_s = iters / elapsed
    name = f"{workers}x{threads}" + (" main" if where == "main" else "")
    return {
        "name": name,
        "workers": workers,
        "threads": threads,
        "where": where,
        "iters": iters,
        "img_s": img_s,
        "img_s_robust": workers / statistics.median(calls),
        "call_ms": 1000.0 * statistics.median(calls),
        "threads_observed": sorted(observed),
    }


def _diag(detector: Any, pre: Any, image: Any, video: str) -> dict[str, float]:
    """Median serial costs (ms) of the per-frame work outside the forward."""
    import numpy as np
    import torch

    from edgedet.capture.worker import OpenCvSource
    from edgedet.postprocess import decode

    def timed(fn: Callable[[], object], n: int) -> float:
        fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t)
        return _ms(statistics.median(samples))

    tensor, geo = pre(image)
    tensor = tensor.copy()
    out = detector.infer(tensor)
    memory_format = torch.channels_last if detector.device == "cpu" else torch.contiguous_format

    def to_input() -> None:
        torch.from_numpy(tensor).to(dtype=torch.float32, memory_format=memory_format)

    source = OpenCvSource(video, "file")
    source.open()
    grab_ns, retrieve_ns = [], []
    try:
        for _ in range(40):
            t = time.perf_counter_ns()
            if not source.grab():
                break
            t2 = time.perf_counter_ns()
            if source.retrieve() is None:
                break
            grab_ns.append(t2 - t)
            retrieve_ns.append(time.perf_counter_ns() - t2)
    finally:
        source.close()
    with torch.inference_mode():
        to_input_ms = timed(to_input, 20)
    return {
        "video_grab": _ms(statistics.median(grab_ns)) if grab_ns else float("nan"),
        "video_retrieve": _ms(statistics.median(retrieve_ns)) if retrieve_ns else float("nan"),
        "preprocess": timed(lambda: pre(image), 20),
        "input_to_channels_last": to_input_ms,
        "postprocess": timed(lambda: decode(out, geo, detector.info.names), 20),
        "output_to_numpy": timed(lambda: np.ascontiguousarray(out), 5),
    }


def _build_pipeline(
    detector: Any, spec: dict[str, Any], count: int, source_factory: Callable[[], Any], *,
    backpressure: bool, realtime: bool, loop: bool, options: Any,
) -> tuple[Any, ...]:
    """The real pipeline, wired like ``app.run`` (minus MQTT and the metrics server)."""
    from prometheus_client import CollectorRegistry

    from edgedet.capture.worker import CaptureWorker
    from edgedet.framequeue import FrameHub
    from edgedet.inference import InferenceWorker
    from edgedet.metrics import Metrics

    stop = threading.Event()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    hub = FrameHub(stop, metrics)
    queue = hub.add_camera(CAMERA, maxsize=spec["queue_size"], backpressure=backpressure)
    sink = _Recorder()
    workers = [InferenceWorker(i, hub, detector, stop, sink, metrics, options) for i in range(count)]
    capture = CaptureWorker(CAMERA, source_factory, queue, stop, metrics, loop=loop, realtime=realtime,
                            stall_timeout_s=30.0)
    return stop, registry, hub, sink, workers, capture


def _shutdown(stop: threading.Event, hub: Any, capture: Any, workers: list[Any]) -> None:
    stop.set()
    capture.join(5.0)
    hub.close()
    for w in workers:
        w.join(5.0)
    alive = [t.name for t in (capture, *workers) if t.is_alive()]
    if alive:
        log.warning("threads still alive after stop: %s", ", ".join(alive))
    crashed = [w.error for w in workers if w.error is not None]
    if crashed:
        raise BenchError(f"inference worker crashed: {crashed[0]}")


def _stage_ms(events: list[tuple[int, Any]]) -> dict[str, float]:
    keys = ("queue_wait", "preprocess", "inference", "postprocess")
    return {k: 1000.0 * statistics.median(d.timings[k] for _, d in events) for k in keys}


def _pipeline_file(detector: Any, spec: dict[str, Any], count: int, threads: int, options: Any) -> dict[str, Any]:
    from edgedet.capture.worker import OpenCvSource

    def factory() -> _LimitedSource:
        return _LimitedSource(OpenCvSource(spec["video"], "file"), spec["frames"])

    stop, _registry, hub, sink, workers, capture = _build_pipeline(
        detector, spec, count, factory, backpressure=True, realtime=False, loop=False, options=options)
    for w in workers:
        w.start()
    capture.start()
    deadline = time.monotonic() + 60.0 + (spec["frames"] or 1000) * 2.0
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        if stop.wait(0.1):
            break
    timed_out = any(w.is_alive() for w in workers)
    _shutdown(stop, hub, capture, workers)
    if timed_out:
        raise BenchError("pipeline did not finish the file in time")
    events = sorted(sink.events, key=lambda e: e[0])
    if len(events) < 2:
        raise BenchError(f"pipeline processed {len(events)} frame(s); need at least 2")
    span_s = (events[-1][0] - events[0][0]) / 1e9
    return {
        "workers": count,
        "threads": threads,
        "threads_observed": sorted(sink.threads_observed),
        "queue_size": spec["queue_size"],
        "frames": len(events),
        "fps": (len(events) - 1) / span_s,
        "fps_robust": 1e9 / statistics.median(b[0] - a[0] for a, b in zip(events, events[1:], strict=False)),
        "stages_ms": _stage_ms(events),
    }


def _child_live(spec: dict[str, Any]) -> dict[str, Any]:
    from edgedet.capture.worker import OpenCvSource
    from edgedet.inference import DecodeOptions, thread_layout
    from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads

    count, threads = thread_layout(None, spec["workers"], spec["threads"])
    set_torch_threads(threads)
    detector = TorchScriptDetector(spec["model"])
    kind: Literal["rtsp", "file"] = "rtsp" if spec["source"] == "rtsp" else "file"

    def factory() -> OpenCvSource:
        return OpenCvSource(spec["url"], kind, open_timeout_s=10.0, read_timeout_s=10.0)

    stop, registry, hub, sink, workers, capture = _build_pipeline(
        detector, spec, count, factory, backpressure=False, realtime=True, loop=kind == "file",
        options=DecodeOptions())

    def counters() -> tuple[float, float]:
        cap = registry.get_sample_value("edgedet_frames_captured_total", {"camera": CAMERA}) or 0.0
        drop = registry.get_sample_value("edgedet_frames_dropped_total", {"camera": CAMERA, "reason": "queue_full"})
        return cap, drop or 0.0

    for w in workers:
        w.start()
    capture.start()
    try:
        if not sink.first.wait(60.0):
            raise BenchError(f"live: no frame processed from {spec['url']} within 60 s")
        stop.wait(spec["warmup_s"])
        cap0, drop0 = counters()
        t0 = time.monotonic_ns()
        end = t0 + int(spec["seconds"] * 1e9)
        ages: list[float] = []
        while time.monotonic_ns() < end and not stop.wait(0.05):
            with sink.lock:
                last = max((d.t_mono_ns for _, d in sink.events[-4:]), default=None)
            if last is not None:
                ages.append(_ms(time.monotonic_ns() - last))
        t1 = time.monotonic_ns()
        cap1, drop1 = counters()
    finally:
        _shutdown(stop, hub, capture, workers)
    events = [(t, d) for t, d in sink.events if t0 <= t <= t1]
    if not events:
        raise BenchError("live: no frame processed in the measurement window")
    e2e = [_ms(t - d.t_mono_ns) for t, d in events]
    captured, dropped = int(cap1 - cap0), int(drop1 - drop0)
    # e2e minus the four stages: Detections + metrics + sink call (decode is inside queue_wait)
    other = statistics.median(e - 1000.0 * sum(d.timings.values()) for e, (_, d) in zip(e2e, events, strict=True))
    return {
        "seconds": round((t1 - t0) / 1e9, 2),
        "workers": count,
        "threads": threads,
        "queue_size": spec["queue_size"],
        "captured": captured,
        "processed": len(events),
        "dropped": dropped,
        "drop_rate": round(dropped / captured, 4) if captured else None,
        "captured_fps": round(captured / ((t1 - t0) / 1e9), 2),
        "processed_fps": round(len(events) / ((t1 - t0) / 1e9), 2),
        "e2e_ms": {f"p{q}": round(_percentile(e2e, q), 2) for q in (50, 95, 99)},
        "frame_age_ms": {
            "p50": round(_percentile(ages, 50), 2),
            "p95": round(_percentile(ages, 95), 2),
            "max": round(max(ages), 2) if ages else None,
        },
        "stages_ms": {k: round(v, 2) for k, v in _stage_ms(events).items()} | {"other": round(other, 2)},
    }


def _child_ultra(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib

    # ultralytics first, as a user would import it: it sets OMP_NUM_THREADS=1 when unset, before torch loads.
    ultralytics = importlib.import_module("ultralytics")
    import torch

    forced = spec["threads"]
    if forced:
        # Ultralytics' select_device() calls torch.set_num_threads(cores - 1) on CPU; pin our count.
        original = torch.set_num_threads
        original(forced)
        torch.set_num_threads = lambda _n: original(forced)  # type: ignore[assignment]
    from ultralytics import YOLO

    model: Any = YOLO(spec["weights"], task="detect")
    stream: Any = model.predict(source=spec["video"], stream=True, imgsz=spec["imgsz"], verbose=False, device="cpu")
    stamps: list[float] = []
    infer_ms: list[float] = []
    observed: set[int] = set()
    shapes: list[list[int]] = []
    try:
        for result in stream:
            stamps.append(time.perf_counter())
            infer_ms.append(float(result.speed.get("inference", float("nan"))))
            observed.add(int(torch.get_num_threads()))
            if len(stamps) == 1:
                predictor = model.predictor
                inner = predictor.inference

                def inference(im: Any, *a: Any, _inner: Any = inner, **kw: Any) -> Any:
                    if len(shapes) < 1:
                        shapes.append([int(v) for v in im.shape])
                    return _inner(im, *a, **kw)

                predictor.inference = inference
            if spec["frames"] and len(stamps) >= spec["frames"]:
                break
    finally:
        stream.close()
    if len(stamps) < 2:
        raise BenchError(f"ultralytics produced {len(stamps)} result(s)")
    return {
        "frames": len(stamps),
        "fps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "fps_robust": 1.0 / statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)),
        "inference_ms": statistics.median(infer_ms[1:]),
        "threads_observed": sorted(observed),
        "input_shape": shapes[0] if shapes else None,
        "ultralytics": ultralytics.__version__,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(_child_main(sys.argv[2:]))
    raise SystemExit(main(sys.argv[1:]))
