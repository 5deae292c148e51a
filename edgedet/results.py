"""Where each processed frame's result goes: the one sink the inference workers call.

Order per frame: MQTT detections message, end-to-end latency (metric + Home Assistant stats),
the flow tracker (health, frame age), then the event stage (which may publish new/update/end).
"""

from __future__ import annotations

import time

from edgedet.events.stage import EventStage
from edgedet.health import FlowTracker
from edgedet.homeassistant import HomeAssistant
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.types import Detections, Frame


class ResultSink:
    """Fans one frame's ``Detections`` out to the outputs; called from the worker threads."""

    def __init__(self, publisher: MqttPublisher, metrics: Metrics, flow: FlowTracker, ha: HomeAssistant,
                 events: EventStage | None) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.flow = flow
        self.ha = ha
        self.events = events  # None when events are disabled

    def __call__(self, dets: Detections, frame: Frame) -> None:
        self.publisher.publish_detections(dets)
        e2e_s = (time.monotonic_ns() - dets.t_mono_ns) / 1e9
        self.metrics.end_to_end.labels(camera=dets.camera).observe(e2e_s)
        self.ha.observe(dets.camera, e2e_s)
        self.flow.seen(dets.camera, dets.t_mono_ns)
        if self.events is not None:
            self.events.on_frame(dets, frame.image)
