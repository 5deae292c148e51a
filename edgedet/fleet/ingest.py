"""The fleet's one MQTT connection to the central broker: subscribe to ``<prefix>/+/...``, feed
``FleetState`` and ``History``, and post verdicts back to ``<prefix>/<node>/feedback``.

It only ever connects out to the broker, so nodes behind NAT work: no connection to any node.
The session is persistent (``clean_session=False``, a fixed client id): events published while
the fleet process restarts are queued by the broker (QoS 1) and arrive when it is back. paho
reconnects on its own with backoff; the state of retained topics is re-sent by the broker on
every subscribe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgedet.fleet.history import History
from edgedet.fleet.state import FleetState
from edgedet.outputs.node import iso_utc
from edgedet.outputs.topics import Topics

log = logging.getLogger("edgedet.fleet")

__all__ = ["BrokerSettings", "FleetIngest", "subscriptions"]

VERDICTS = ("true_positive", "false_positive")


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca: str | None = None  # TLS to the broker with this CA file
    client_id: str = "edgedet-fleet"
    keepalive: int = 30


def subscriptions(prefix: str) -> list[str]:
    """The topic filters of the fleet contract (detections are left out: too many at fleet scale)."""
    return [f"{prefix}/+/status", f"{prefix}/+/info", f"{prefix}/+/uplink", f"{prefix}/+/+/status",
            f"{prefix}/+/+/stats", f"{prefix}/+/+/events", f"{prefix}/+/+/snapshot", f"{prefix}/+/+/+/active"]


class FleetIngest:
    """``start()`` (never blocks), ``stop()``; ``post_verdict()`` from the API."""

    def __init__(self, broker: BrokerSettings, state: FleetState, history: History, *, name: str = "fleet",
                 clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self.state = state
        self.history = history
        self.name = name
        self._clock = clock
        self.connected = threading.Event()
        self.received = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=broker.client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.ca:
            client.tls_set(ca_certs=broker.ca)
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._addr = f"{broker.host}:{broker.port}"

    def start(self) -> None:
        self._client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s refused the fleet: %s", self._addr, reason)
            return
        client.subscribe([(t, 1) for t in subscriptions(self.state.prefix)])
        self.connected.set()
        log.info("fleet connected to MQTT broker %s, watching %s/+/...", self._addr, self.state.prefix)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected.is_set():
            log.warning("fleet lost MQTT broker %s (%s); reconnecting", self._addr, reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = self._clock()
        self.received += 1
        payload = bytes(msg.payload)
        try:
            change = self.state.apply(msg.topic, payload, bool(msg.retain), now)
            if change is None:
                return
            if change.availability is not None:
                self.history.add_availability(change.node, change.availability, now)
                log.info("node %s is %s", change.node, "online" if change.availability else "offline")
            if change.duplicate:
                log.error("DUPLICATE NODE ID %r: two processes publish as this node (start ids alternate)",
                          change.node)
            if change.event is not None:
                self.history.add_event(change.event)
            elif change.kind == "snapshot" and payload and change.camera is not None:
                self.history.add_snapshot(change.node, change.camera, payload, now)
        except Exception:  # one bad message must not end the loop thread
            log.exception("fleet could not store the message on %s", msg.topic)

    def post_verdict(self, node: str, event_id: str, camera: str, verdict: str) -> dict[str, Any]:
        """Send a verdict to the node owning the event (QoS 1); raises ValueError on bad input."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict: expected one of {', '.join(VERDICTS)} (got {verdict!r})")
        topic = Topics(self.state.prefix, node).feedback()
        body = {"verdict_id": uuid.uuid4().hex[:16], "event_id": event_id, "camera": camera, "verdict": verdict,
                "by": self.name, "ts": iso_utc(self._clock())}
        info = self._client.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"cannot publish the verdict: {mqtt.error_string(info.rc)}")
        self.history.add_verdict(body, node, self._clock())
        return body
