"""``edgedet bench --motion``: ``detect.mode`` always vs motion on the generated clips, and capacity planning.

One child process (torch) runs the daemon's own classes -- ``CameraSet`` (with its ``MotionGate``),
``FrameHub``, ``WorkerPool``, ``EventStage`` and ``ProfileRunner`` (the event hold) -- on
``static_scene.mp4`` and ``slow_plume.mp4`` (``scripts/make_clip.py``), each read with back-pressure
in both modes. The event trackers and the tracker run on the clip's media clock (frame index / fps),
so a run is as fast as the model allows and gives the same events as real time would.

Reported per clip and mode: frames decoded, inferences, skipped frames by reason; per appearance of
the static scene the first ``new`` event and its delay from the appearance; for the plume, when the
motion measure first raises the rate (frames and seconds after the plume starts). Then the cost of the
motion measure per 1280x720 frame, and how many cameras this box sustains at an inference interval in
each mode (``capacity``).
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Literal, cast

from edgedet.bench.spawn import MotionSpec, run_child

log = logging.getLogger(__name__)

CLIPS = ("static_scene", "slow_plume")
CAMERA = "bench"


def run_motion(model: Path, clips_dir: Path, video: Path, min_interval_s: float, max_interval_s: float,
               threads: int | None) -> dict[str, Any]:
    """Parent side: one child for everything; returns its result."""
    spec = MotionSpec(str(model), str(clips_dir), str(video), min_interval_s, max_interval_s, threads)
    return run_child(spec, timeout=1800.0)


# --------------------------------------------------------------------------- child side


class MediaClock:
    """The time of the clip frame being processed: seq / fps (set by the sink before the events)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Messages:
    """The events publisher: each event message with the media time it was sent at."""

    def __init__(self, clock: MediaClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.events: list[tuple[float, dict[str, Any]]] = []

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                kind: str = "other") -> bool:
        if kind == "events":
            with self.lock:
                self.events.append((self.clock.now, json.loads(payload)))
        return True

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        pass


def _run_clip(detector: Any, clip: Path, fps: float, mode: str, spec: MotionSpec, workers: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from edgedet.bench.pipeline import STALL_TIMEOUT_S, STOP_TIMEOUT_S
    from edgedet.capture.cameras import CameraSet
    from edgedet.config import CameraConfig, EventsConfig, EventThresholds
    from edgedet.config.detect import DetectConfig
    from edgedet.events.stage import EventStage
    from edgedet.events.tracker import EventTracker
    from edgedet.framequeue import FrameHub
    from edgedet.inference import DecodeOptions, WorkerPool
    from edgedet.metrics import Metrics
    from edgedet.outputs.topics import Topics
    from edgedet.profile_runner import ProfileRunner
    from edgedet.results import ResultSink
    from edgedet.tracking import TrackingStage
    from edgedet.types import Detections, Frame

    detect = DetectConfig(mode=cast(Literal["always", "motion"], mode), min_interval_s=spec.min_interval_s,
                          max_interval_s=spec.max_interval_s)
    cam = CameraConfig(url=str(clip), realtime=False, loop=False, stall_timeout_s=STALL_TIMEOUT_S, detect=detect)
    events_cfg = EventsConfig(default=EventThresholds(confirm_frames=3, window_frames=5, min_score=0.3))
    stop = threading.Event()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    clock = MediaClock()
    pub = Messages(clock)
    topics = Topics("edgedet", "bench")
    tracker = EventTracker.from_config(CAMERA, cam, events_cfg, None, clock=clock)
    tracking = TrackingStage(events_cfg.tracking, {CAMERA: cam}, clock=clock) if events_cfg.tracking.enabled else None
    events = EventStage({CAMERA: tracker}, pub, topics, metrics, None, tracking, None)
    hub = FrameHub(stop, metrics)
    cams = CameraSet(hub, metrics, None)
    inferred: list[float] = []
    lock = threading.Lock()
    runner_box: list[ProfileRunner] = []

    def sink(dets: Detections, frame: Frame) -> None:
        with lock:  # one frame at a time through the events, in media time
            clock.now = frame.seq / fps
            inferred.append(clock.now)
            events.on_frame(dets, frame.image)
            events.tick()
            runner_box[0].tick()  # the event hold, as the daemon's main loop does

    result_sink = ResultSink(pub, metrics, _NoFlow(), _NoStats(), events)  # type: ignore[arg-type]
    runner_box.append(ProfileRunner(cams, events, result_sink, pub, topics, metrics))
    pool = WorkerPool(hub, sink, metrics, on_crash=lambda _exc: stop.set())
    pool.start(detector, DecodeOptions(), workers)
    t0 = time.monotonic()
    try:
        cams.start(CAMERA, cam)
        runner_box[0].configure({CAMERA: cam}, events_cfg, None)
        while pool.alive() and not stop.wait(0.05):
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"{clip.name} ({mode}) did not finish in 900 s")
    finally:
        stop.set()
        hub.close()
        cams.stop(timeout=STOP_TIMEOUT_S)
        pool.stop(STOP_TIMEOUT_S)
    wall = time.monotonic() - t0
    with lock:
        clock.now = 1e9
        events.close()

    def count(name: str, **labels: str) -> int:
        return int(registry.get_sample_value(name, {"camera": CAMERA, **labels}) or 0)

    news = [(t, e) for t, e in pub.events if e["type"] == "new"]
    times = sorted(inferred)
    return {
        "mode": mode,
        "frames": count("edgedet_frames_captured_total"),
        "inferences": len(inferred),
        "skipped": {r: count("edgedet_inference_skipped_total", reason=r) for r in ("no_motion", "min_interval")},
        "wall_s": round(wall, 2),
        "inference_times_s": [round(t, 2) for t in times],
        "max_gap_s": round(max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0), 2),
        "new_events_s": [round(t, 2) for t, _ in news],
        "new_labels": [e["label"] for _, e in news],
    }


class _NoFlow:
    def seen(self, camera: str, t_mono_ns: int) -> None:
        pass


class _NoStats:
    def observe(self, camera: str, latency_s: float) -> None:
        pass


def _appearances(result: dict[str, Any], spans: list[tuple[float, float]], slack_s: float) -> list[float | None]:
    """Per appearance, the delay from its start to the first ``new`` event in it (None: no event)."""
    out: list[float | None] = []
    for start, end in spans:
        hits = [t for t in result["new_events_s"] if start - 1e-6 <= t <= end + slack_s]
        out.append(round(hits[0] - start, 2) if hits else None)
    return out


def _gate_cost(video: str, frames: int = 150) -> dict[str, Any]:
    import cv2

    from edgedet.motion import MotionGate, MotionSettings

    cap = cv2.VideoCapture(video)
    images: list[Any] = []
    while len(images) < frames:
        ok, image = cap.read()
        if not ok:
            break
        images.append(image)
    cap.release()
    if not images:
        return {}
    gate = MotionGate(MotionSettings())
    for i, image in enumerate(images[:10]):
        gate.decide(image, i * 0.04)  # warm-up
    times = []
    for i, image in enumerate(images):
        t = time.perf_counter()
        gate.decide(image, 1.0 + i * 0.04)
        times.append(time.perf_counter() - t)
    decode = []
    cap = cv2.VideoCapture(video)
    for _ in range(min(frames, 100)):
        t = time.perf_counter()
        ok, _image = cap.read()
        decode.append(time.perf_counter() - t)
        if not ok:
            break
    cap.release()
    h, w = images[0].shape[:2]
    return {"size": f"{w}x{h}", "gate_ms_p50": round(1000 * statistics.median(times), 3),
            "gate_ms_p95": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 3),
            "decode_ms_p50": round(1000 * statistics.median(decode), 3)}


def _plume_gate(clip: Path, fps: float, start_s: float, spec: MotionSpec) -> dict[str, Any]:
    """The motion measure alone over the plume clip: the first frame after the plume starts where it
    raises the rate (``motion`` or ``slow_change``), in frames and seconds."""
    import cv2

    from edgedet.motion import MotionGate, MotionSettings

    gate = MotionGate(MotionSettings(min_interval_s=spec.min_interval_s, max_interval_s=spec.max_interval_s))
    cap = cv2.VideoCapture(str(clip))
    i, first = 0, None
    reasons: dict[str, int] = {}
    while True:
        ok, image = cap.read()
        if not ok:
            break
        d = gate.decide(image, i / fps)
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        if first is None and i / fps >= start_s and d.reason in ("motion", "slow_change"):
            first = (i, d.reason)
        i += 1
    cap.release()
    if first is None:
        return {"raised": False, "reasons": reasons}
    frames_after = first[0] - round(start_s * fps)
    return {"raised": True, "reason": first[1], "frames_after_start": frames_after,
            "seconds_after_start": round(frames_after / fps, 2), "reasons": reasons}


def measure_motion(spec: MotionSpec) -> dict[str, Any]:
    from edgedet.inference import thread_layout
    from edgedet.model.torchscript import TorchScriptDetector, set_torch_threads

    workers, threads = thread_layout(None, None, spec.threads, True)
    set_torch_threads(threads)
    detector = TorchScriptDetector(spec.model)
    clips = Path(spec.clips_dir)
    out: dict[str, Any] = {"min_interval_s": spec.min_interval_s, "max_interval_s": spec.max_interval_s,
                           "workers": workers, "threads": threads, "cost": _gate_cost(spec.video)}
    for name in CLIPS:
        meta = json.loads((clips / f"{name}.json").read_text())
        fps = float(meta["fps"])
        runs = {mode: _run_clip(detector, clips / f"{name}.mp4", fps, mode, spec, workers)
                for mode in ("always", "motion")}
        row: dict[str, Any] = {"fps": fps, "runs": runs,
                               "ratio": round(runs["always"]["inferences"] / max(1, runs["motion"]["inferences"]), 2)}
        if "appearances" in meta:
            spans = [(a["start_s"], a["end_s"]) for a in meta["appearances"]]
            delays = {m: _appearances(runs[m], spans, spec.max_interval_s) for m in runs}
            row["delays_s"] = delays
            slack = spec.max_interval_s + 1.0 / fps
            row["targets"] = {
                "ratio_ge_5": row["ratio"] >= 5.0,
                "every_appearance": all(d is not None for d in delays["motion"]),
                "delay_within_floor": all(m is not None and a is not None and m - a <= slack + 1e-6
                                          for m, a in zip(delays["motion"], delays["always"], strict=True)),
            }
        else:
            row["gate"] = _plume_gate(clips / f"{name}.mp4", fps, float(meta["start_s"]), spec)
            first = [t for t in runs["motion"]["inference_times_s"] if t >= float(meta["start_s"])]
            row["first_inference_after_start_s"] = round(first[0] - float(meta["start_s"]), 2) if first else None
        out[name] = row
        always = runs["always"]
        out.setdefault("pipeline_fps", round(always["inferences"] / max(1e-9, always["wall_s"]), 2))
    out["capacity"] = capacity(out)
    return out


def capacity(out: dict[str, Any], cores: int | None = None) -> dict[str, Any]:
    """Cameras this box sustains: inference capacity (pipeline fps with back-pressure, all cores) over each
    camera's inference rate, after what every camera's capture thread costs (decode + motion measure per
    frame at the source rate, spread over the cores). ``motion``: the inference duty measured on the
    static scene (a still camera with a few appearances)."""
    import os

    cores = cores or os.cpu_count() or 1
    fps_box = float(out["pipeline_fps"])
    cost = out.get("cost", {})
    per_frame_s = (cost.get("decode_ms_p50", 0.0) + cost.get("gate_ms_p50", 0.0)) / 1000.0
    scene = out["static_scene"]
    duty = scene["runs"]["motion"]["inferences"] / max(1, scene["runs"]["always"]["inferences"])
    rows = []
    for interval in (0.2, 1.0, 5.0, 10.0):
        src_fps = 1.0 / interval  # frames decoded per camera per second (fps_limit = 1 / interval)
        always_share = (1.0 / interval) / fps_box
        motion_share = duty * (1.0 / interval) / fps_box + src_fps * per_frame_s / cores
        # motion mode never goes below its floor: at least one inference per max_interval_s
        floor_share = (1.0 / float(out["max_interval_s"])) / fps_box
        rows.append({"interval_s": interval, "always": int(1.0 / always_share),
                     "motion": int(1.0 / max(motion_share, floor_share))})
    return {"pipeline_fps": fps_box, "motion_duty": round(duty, 3), "cores": cores, "rows": rows}


def format_motion(r: dict[str, Any]) -> str:
    lines = [f"motion-aware inference (min_interval_s {r['min_interval_s']:g}, max_interval_s "
             f"{r['max_interval_s']:g}; {r['workers']} worker(s) x {r['threads']} thread(s))"]
    cost = r.get("cost", {})
    if cost:
        lines.append(f"  motion measure at {cost['size']}: {cost['gate_ms_p50']:.2f} ms p50, "
                     f"{cost['gate_ms_p95']:.2f} ms p95 per frame (decode {cost['decode_ms_p50']:.2f} ms)")
    for name in CLIPS:
        row = r[name]
        a, m = row["runs"]["always"], row["runs"]["motion"]
        lines.append(f"  {name}: {a['frames']} frames at {row['fps']:g} fps; inferences always {a['inferences']}, "
                     f"motion {m['inferences']} ({row['ratio']:g}x fewer; skipped {m['skipped']}); longest gap "
                     f"{m['max_gap_s']:g} s")
        if "delays_s" in row:
            lines.append(f"    first 'new' per appearance, s after it starts: always {row['delays_s']['always']}, "
                         f"motion {row['delays_s']['motion']}")
            lines.append(f"    targets: {row['targets']}")
        else:
            g = row["gate"]
            if g.get("raised"):
                lines.append(f"    the motion measure raises the rate {g['frames_after_start']} frames "
                             f"({g['seconds_after_start']:g} s) after the plume starts ({g['reason']}); first "
                             f"inference after the start: {row['first_inference_after_start_s']} s")
            else:
                lines.append("    the motion measure never raised the rate (the floor alone)")
    cap = r["capacity"]
    lines.append(f"  capacity ({cap['cores']} cores, pipeline {cap['pipeline_fps']:g} inferences/s, motion duty "
                 f"{cap['motion_duty']:g} on the static scene): cameras per mode")
    for c in cap["rows"]:
        lines.append(f"    one frame every {c['interval_s']:g} s: always {c['always']}, motion {c['motion']}")
    return "\n".join(lines)

