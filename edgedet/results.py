"""Where each processed frame's result goes: the one sink the inference workers call.

Order per frame: the tracker (track ids), MQTT detections message, end-to-end latency (metric + Home Assistant stats),
the flow tracker (health, frame age), then the event stage (which may publish new/update/end).
Each output is guarded on its own (``inference.FrameErrors``): a frame that one output cannot take
(a value JSON cannot carry, a bug in a tracker) is counted in ``frame_errors{camera,kind}`` with kind
``publish``, ``stats`` or ``events``, and still reaches the others.
"""

from __future__ import annotations

import dataclasses
import time

from edgedet.events.stage import EventStage
from edgedet.health import FlowTracker
from edgedet.homeassistant import HomeAssistant
from edgedet.inference import FrameErrors
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.types import Detections, Frame
from edgedet.web.live import LiveFrames


class ResultSink:
    """Fans one frame's ``Detections`` out to the outputs; called from the worker threads."""

    def __init__(self, publisher: MqttPublisher, metrics: Metrics, flow: FlowTracker, ha: HomeAssistant,
                 events: EventStage | None, errors: FrameErrors | None = None,
                 live: LiveFrames | None = None) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.flow = flow
        self.ha = ha
        self.events = events  # None when events are disabled
        self.errors = errors if errors is not None else FrameErrors(metrics)
        self.live = live  # the web console's newest frame per camera (a reference store; None: no console)
        # camera -> the labels it reports (``labels`` of the camera or its active profile); absent: every label.
        # Replaced whole by edgedet/profile_runner.py (one reference swap, read without a lock).
        self.labels: dict[str, frozenset[str]] = {}

    def __call__(self, dets: Detections, frame: Frame) -> None:
        guard = self.errors.guard
        allowed = self.labels.get(dets.camera)
        if allowed is not None and any(d.label not in allowed for d in dets.items):
            dets = dataclasses.replace(dets, items=tuple(d for d in dets.items if d.label in allowed))
        if self.events is not None:
            with guard(dets, "tracking"):
                dets = self.events.track(dets)  # track ids in the detections message too
        with guard(dets, "publish"):
            self.publisher.publish_detections(dets)
        e2e_s = (time.monotonic_ns() - dets.t_mono_ns) / 1e9
        with guard(dets, "stats"):
            self.metrics.end_to_end.labels(camera=dets.camera).observe(e2e_s)
            self.ha.observe(dets.camera, e2e_s)
        self.flow.seen(dets.camera, dets.t_mono_ns)
        if self.live is not None:
            self.live.publish(dets, frame, e2e_s)
        if self.events is not None:
            with guard(dets, "events"):
                self.events.on_frame(dets, frame.image)
