"""Is the daemon working? The answers behind ``/healthz`` and the systemd watchdog.

``FlowTracker`` records when each camera last produced a processed frame (it also feeds the
``frame_age`` gauges). ``Health`` turns that, the running cameras and the broker state into the
``/healthz`` answer; ``Liveness`` is the systemd watchdog's verdict (a wedged daemon, from the
threads' heartbeats). ``CrashLatch`` remembers the first worker crash.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edgedet.capture.cameras import CameraSet
from edgedet.heartbeat import Heartbeat
from edgedet.inference import WorkerPool
from edgedet.outputs.client import MqttPublisher


class FlowTracker:
    """When each camera last produced a processed frame."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def seen(self, camera: str, t_mono_ns: int) -> None:
        with self._lock:
            if t_mono_ns > self._last.get(camera, 0):
                self._last[camera] = t_mono_ns

    def age_s(self, camera: str) -> float:
        """Seconds since the camera's newest processed frame was captured; NaN before the first."""
        with self._lock:
            last = self._last.get(camera)
        return float("nan") if last is None else (time.monotonic_ns() - last) / 1e9


class CrashLatch:
    """The first exception that crashed a worker; recording one sets the shared stop Event."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._errors: list[BaseException] = []

    def __call__(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._stop.set()

    @property
    def first(self) -> BaseException | None:
        return self._errors[0] if self._errors else None


class Health:
    """``/healthz``: healthy while every live camera delivers frames within its stall timeout and
    the broker is connected."""

    def __init__(self, cams: CameraSet, flow: FlowTracker, publisher: MqttPublisher, broker: str) -> None:
        self.cams = cams
        self.flow = flow
        self.publisher = publisher
        self.broker = broker

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        running = self.cams.snapshot()  # one copy: safe while a reload changes the set
        ended = {name for name, (queue, _) in running.items() if queue.closed}
        problems = []
        for name, (_, cam) in running.items():
            age = self.flow.age_s(name)
            if name in ended:
                continue
            if age != age:
                problems.append(f"camera {name}: no frame yet")
            elif age > cam.idle_limit_s:  # stall timeout (+ the motion floor interval)
                problems.append(f"camera {name}: last frame {age:.1f}s ago")
        connected = self.publisher.connected
        if not connected:
            problems.append(f"MQTT broker {self.broker} not connected")
        body: dict[str, Any] = {
            "status": "ok" if not problems else "unhealthy",
            "mqtt_connected": connected,
            "cameras": {n: {"ended": n in ended, "last_frame_age_s": _round(self.flow.age_s(n))} for n in running},
        }
        outbox = self.publisher.outbox_state()
        if outbox is not None:  # degraded (in memory) is reported, not unhealthy: messages still flow
            body["outbox"] = outbox
        if problems:
            body["reason"] = "; ".join(problems)
        return not problems, body


class Liveness:
    """The systemd watchdog's verdict: is the daemon wedged? Pings stop when a worker crashed, or a
    thread has been silent for longer than ``grace_s`` past what it announced: an inference worker
    stuck on one frame, a capture loop not iterating, or the main loop not ticking.

    Unreachable cameras do not stop the pings (a restart cannot fix a dead network): they are
    reported by ``edgedet_camera_up``, the camera's MQTT status and ``/healthz``.
    """

    def __init__(self, cams: CameraSet, pool: WorkerPool, crashes: CrashLatch, grace_s: float,
                 tick_s: float = 0.5) -> None:
        self.cams = cams
        self.pool = pool
        self.crashes = crashes
        self.grace_s = grace_s
        self.tick_s = tick_s
        self._main = Heartbeat()

    def tick(self) -> None:
        """The main loop is alive (called every tick, and while a reload waits for a model)."""
        self._main.beat(self.tick_s)

    def __call__(self) -> tuple[bool, str]:
        crash = self.crashes.first
        if crash is not None:
            return False, f"a worker crashed: {crash}"
        beats = {"main loop": self._main, **self.pool.heartbeats()}
        beats.update({f"capture:{name}": beat for name, beat in self.cams.heartbeats().items()})
        silent = {name: beat.silent_s() for name, beat in beats.items()}
        stuck = [f"{name} silent for {s:.0f} s" for name, s in silent.items() if s > self.grace_s]
        if stuck:
            return False, "wedged: " + "; ".join(stuck)
        live = [n for n, q in self.cams.queues().items() if not q.closed]
        return True, f"{len(live)} live camera(s), {self.pool.processed} frame(s) processed"


def _round(value: float) -> float | None:
    return None if value != value else round(value, 3)
