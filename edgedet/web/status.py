"""The JSON bodies of ``/api/v1/status`` and ``/api/v1/cameras``, from what the pipeline publishes
(metrics, the newest frames, the history) without touching the hot path.

``Console`` holds every source; ``sample()`` (every second, on the server's loop) turns counters
into rates and records state changes (camera up/down/frozen, broker connected/lost).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedet import __version__
from edgedet.config.sections import WebConfig
from edgedet.metrics import HealthCheck, Metrics
from edgedet.pipeline import LoadedModel
from edgedet.web.feedback import Feedback
from edgedet.web.history import EventHistory, iso_time
from edgedet.web.live import LiveFrames

__all__ = ["Console"]

_DISK_CACHE_S = 10.0
_RATE_WINDOW_S = 10.0


@dataclass
class Console:
    """Everything the web handlers read. ``model`` is set once it is loaded (and on a reload)."""

    node: str
    web: WebConfig
    state_dir: Path
    broker: str
    metrics: Metrics
    live: LiveFrames
    history: EventHistory
    feedback: Feedback
    cameras: Callable[[], list[str]]  # the running cameras, in config order
    connected: Callable[[], bool]  # the MQTT broker state
    health: HealthCheck
    model: LoadedModel | None = None
    started: float = field(default_factory=time.monotonic)
    changes: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    _states: dict[str, str] = field(default_factory=dict)
    _captured: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    _disk: tuple[float, int] = (-1e9, 0)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_model(self, model: LoadedModel) -> None:
        self.model = model

    # ----------------------------------------------------------------- sampling

    def sample(self) -> None:
        """Counter rates and state changes; called every second by the server."""
        now = time.monotonic()
        with self._lock:
            for name in self.cameras():
                value = self._value("edgedet_frames_captured_total", camera=name) or 0.0
                samples = self._captured.setdefault(name, deque(maxlen=64))
                samples.append((now, value))
                while samples and now - samples[0][0] > _RATE_WINDOW_S:
                    samples.popleft()
                self._change(f"camera {name}", self.camera_state(name))
            self._change("broker", "connected" if self.connected() else "disconnected")

    def _change(self, what: str, state: str) -> None:
        before = self._states.get(what)
        if before != state:
            self._states[what] = state
            self.changes.appendleft({"time": iso_time(time.time()), "what": what, "state": state, "was": before})

    def _value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def camera_state(self, name: str) -> str:
        if self._value("edgedet_camera_frozen", camera=name):
            return "frozen"
        return "up" if self._value("edgedet_camera_up", camera=name) else "down"

    def _profile(self, name: str) -> str | None:
        """The camera's active profile (``base``: its own settings; edgedet/profile_runner.py), from the metric."""
        for family in self.metrics.profile_active.collect():
            for sample in family.samples:
                if sample.labels.get("camera") == name and sample.value == 1:
                    return sample.labels["profile"]
        return None

    def _captured_fps(self, name: str) -> float:
        with self._lock:
            samples = list(self._captured.get(name, ()))
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        return round((samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]), 2)

    # ----------------------------------------------------------------- bodies

    def camera_list(self) -> list[dict[str, Any]]:
        active = self.history.active()
        out = []
        for name in self.cameras():
            dets = self.live.latest(name)
            out.append({
                "name": name,
                "state": self.camera_state(name),
                "profile": self._profile(name),
                "fps_captured": self._captured_fps(name),
                **self.live.rates(name),
                "seq": None if dets is None else dets.seq,
                "size": None if dets is None else [dets.width, dets.height],
                "detections": [] if dets is None else [d.as_dict() for d in dets.items],
                "active_events": [{"id": e["id"], "label": e["label"], "top_score": e["top_score"],
                                   "start_time": e["start_time"]} for e in active.get(name, [])],
            })
        return out

    def status(self) -> dict[str, Any]:
        model = self.model
        info: dict[str, Any] | None = None
        layout: dict[str, Any] | None = None
        if model is not None:
            det = model.detector
            info = {"name": det.info.name, "backend": det.backend, "runtime": det.runtime, "device": det.device,
                    "precision": "fp16" if det.info.half or det.np_dtype.__name__ == "float16" else "fp32",
                    "input_size": list(det.info.imgsz), "classes": list(det.info.names)}
            layout = {"workers": model.workers, "batch_size": model.batch_size,
                      "batch_timeout_ms": round(model.batch_timeout_s * 1000, 3)}
        threads = sorted(t.name for t in threading.enumerate())
        return {
            "node": self.node,
            "version": __version__,
            "model": info,
            "threads": {"layout": layout, "count": len(threads), "names": threads},
            "broker": {"address": self.broker, "connected": self.connected()},
            "outbox": {"backlog": int(self._value("edgedet_outbox_messages") or 0)},
            "disk": self._disk_use(),
            "history": {"events": self.history.count(), "bytes": self.history.size_bytes(),
                        "not_stored": self.history.dropped},
            "uptime_s": round(time.monotonic() - self.started, 1),
            "cameras": len(self.cameras()),
            "recent_changes": list(self.changes),
        }

    def _disk_use(self) -> dict[str, Any]:
        now = time.monotonic()
        checked, used = self._disk
        if now - checked > _DISK_CACHE_S:
            used = _du(self.state_dir)
            self._disk = (now, used)
        try:
            free = shutil.disk_usage(self.state_dir).free
        except OSError:
            free = None
        return {"state_dir": str(self.state_dir), "used_bytes": used, "free_bytes": free}


def _du(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
