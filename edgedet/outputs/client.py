"""The ``MqttPublisher``: availability (LWT), retained state re-sent on reconnect, and the one ``_send``.

Topics (``Topics``), all under ``<prefix>/<node>``:

* ``<prefix>/<node>/status`` -- retained ``online`` on every (re)connect, ``offline`` as the
  Last Will (the broker publishes it when the daemon vanishes), ``stopped`` on clean shutdown.
* ``<prefix>/<node>/<camera>/status`` -- retained ``online`` / ``offline``; every camera starts
  ``offline`` (so a stale ``online`` from a previous run is overwritten), is published on change
  and re-sent on every reconnect.
* ``<prefix>/<node>/<camera>/detections`` -- one JSON message per frame (see
  ``schemas/detections.schema.json``), not retained.

Connecting never blocks start-up: ``connect_async`` + ``loop_start`` and paho retries on its own
with backoff (1 s doubling to 30 s). Every message goes through ``MqttPublisher._send``, the single
choke point that decides between the outbox and a direct send.

Delivery (QoS >= 1) with an ``Outbox`` (see ``outbox.py``): ``_send`` stores the message on disk
and returns; the ``mqtt-outbox`` thread (``sender.py``) hands stored rows to paho in id order, at most
``OUTBOX_WINDOW`` unacknowledged at a time, and deletes a row on its PUBACK. After every
(re)connect -- once ``online`` and the camera statuses are out -- it resends the whole outbox from
the oldest row, so live messages never overtake a backlog. At-least-once: rows in flight when a
connection drops are sent again (paho may also resend its in-memory copy); consumers dedupe on
``(topic, seq, ts)``. Status topics bypass the outbox: they are re-published fresh on each connect.
The client connects with a unique client id and a clean session: durability comes from the
outbox, so no broker-side publisher session (``clean_session=False``) is needed.
Without an outbox, QoS >= 1 messages are queued in paho's memory only (lost on a restart).

Retained state after a reconnect: paho re-sends every unacknowledged message of the previous
connection *after* ``on_connect``, so an old ``offline`` written into a dead socket would overwrite
the fresh ``online``. On each connect, before the fresh state goes out, the publisher removes from
paho's queue its retained state messages and the outbox rows of earlier connections (the replay
sends those again). paho's own queue cap is off: retained state is never refused; the publisher caps
only the other direct QoS>=1 messages queued while disconnected (``MAX_QUEUED_MESSAGES``).

Size: a payload over ``mqtt.max_payload_bytes`` is never sent. A snapshot is re-encoded (lower
quality, then smaller) to fit; anything else is parked (kept in the outbox's ``parked`` table when
there is one), counted in ``edgedet_mqtt_parked_total{kind,reason}`` and logged once per kind.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgedet.config import MqttConfig
from edgedet.errors import ConfigError
from edgedet.metrics import OUTBOX_KINDS, Metrics
from edgedet.outputs.outbox import Outbox, OutboxError, OutboxMessage
from edgedet.outputs.payload import fit_jpeg, to_payload
from edgedet.outputs.sender import OUTBOX_WINDOW, PARK_AFTER_DISCONNECTS, OutboxSender
from edgedet.outputs.tls import ssl_context
from edgedet.outputs.topics import Topics
from edgedet.types import Detections

log = logging.getLogger("edgedet.publish")  # a stable stage name: journald filters and docs use it

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"

#: Upper bound of direct (not outbox, not retained state) QoS>=1 messages kept in paho's memory
#: while the broker is away; retained state is never refused.
MAX_QUEUED_MESSAGES = 10_000
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: paho's own in-flight limit: a little above the outbox window, so status messages are never stuck
#: behind a full replay window.
_PAHO_INFLIGHT = OUTBOX_WINDOW + 20
_MAX_PAYLOAD = 268_435_455  # MQTT's limit; paho raises ValueError above it

# --------------------------------------------------------------------------- publisher


_REFUSAL_HINTS = {
    "Bad user name or password": "check mqtt.username/password",
    "Not authorized": "check mqtt.username/password",
    "Client identifier not valid": "check mqtt.client_id",
    "Unsupported protocol version": "the broker does not speak MQTT 3.1.1",
    "Server unavailable": "retrying",
}


class MqttPublisher:
    """Publishes detections and availability to one broker; thread-safe.

    Lifecycle: ``start()`` once (never blocks), ``publish_detections()`` from any thread,
    ``set_camera_status()`` from capture workers, ``stop()`` once (idempotent).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        node_id: str,
        cameras: Iterable[str],
        metrics: Metrics,
        client_id: str | None = None,
        *,
        outbox: Outbox | None = None,
    ) -> None:
        """``outbox``: store QoS>=1 messages on disk until acknowledged; the publisher owns it from
        here on and closes it in ``stop()`` (also when this constructor raises)."""
        try:
            self._setup(cfg, node_id, cameras, metrics, client_id, outbox)
        except BaseException:
            if outbox is not None:
                outbox.close()
            raise

    def _setup(
        self,
        cfg: MqttConfig,
        node_id: str,
        cameras: Iterable[str],
        metrics: Metrics,
        client_id: str | None,
        outbox: Outbox | None,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._addr = f"{cfg.host}:{cfg.port}"
        try:
            self.topics = Topics(cfg.topic_prefix, node_id)
            cams = list(cameras)
            for cam in cams:
                self.topics.camera_status(cam)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if cfg.qos not in (0, 1, 2):
            raise ConfigError(f"mqtt.qos: expected 0, 1 or 2 (got {cfg.qos!r})")
        # Camera availability as last reported; every camera starts offline.
        self._cameras: dict[str, bool] = dict.fromkeys(cams, False)
        self._retained: dict[str, bytes | str] = {}  # other retained state, re-sent on reconnect
        self._subscriptions: dict[str, int] = {}  # topic filter -> qos, subscribed on every connect
        self._lock = threading.Lock()  # guards _cameras and the order of camera-status publishes
        self._life_lock = threading.Lock()
        self._connected = threading.Event()
        self._started = False
        self._stopped = False
        self._stopping = False
        self._state = "new"  # new | up | down | refused:<reason>; logged on change only
        self._payload_error_logged = False
        self._outbox = outbox
        self._outbox_failing = False  # logged once per failure/recovery
        self._state_mids: set[int] = set()  # paho mids of retained state not yet acknowledged
        self._mids_lock = threading.Lock()
        self._parked_logged: set[str] = set()
        self._queue_full_logged = False
        self._stuck: tuple[int, int] | None = None  # (paho mid first in its resend queue, connects in a row)
        for kind in ("detections", "status"):  # export zeros from the start so rate() and alerts work at once
            metrics.mqtt_published.labels(kind=kind)
            metrics.mqtt_publish_failures.labels(kind=kind)

        self.client_id = client_id or cfg.client_id or f"edgedet-{node_id}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311
        )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            client.tls_set_context(ssl_context(cfg.tls))  # paho takes ``insecure`` from the context
        client.will_set(self.topics.node_status(), STATUS_OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(0)  # never refuse retained state; see _send for the cap
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._sender: OutboxSender | None = None
        if outbox is not None:
            client.max_inflight_messages_set(_PAHO_INFLIGHT)
            self._sender = OutboxSender(outbox, client, self._addr, self._count_parked)
            client.on_pre_connect = self._sender.on_pre_connect
        client.on_publish = self._on_publish

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Begin connecting in the background; returns at once even with no broker."""
        with self._life_lock:
            if self._started or self._stopped:
                return
            self._started = True
        self._metrics.mqtt_connected.set(0)
        try:
            self._client.connect_async(self._cfg.host, self._cfg.port, self._cfg.keepalive)
        except ValueError as exc:
            raise ConfigError(f"mqtt: {exc}") from None
        if self._sender is not None:
            self._sender.start()
        self._client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Give the outbox up to ``timeout`` s to drain (when connected), publish retained
        ``stopped`` (waiting up to ``timeout`` s for it), disconnect, end the loop, close the
        outbox. Messages still in the outbox are sent by the next run."""
        with self._life_lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if not started:
            if self._outbox is not None:
                self._outbox.close()
            return
        if self._sender is not None and self._outbox is not None:
            if self._connected.is_set():
                self._sender.wait_drained(timeout)
            if len(self._outbox):
                log.info("stopping with %d MQTT message(s) in the outbox; the next start sends them",
                         len(self._outbox))
        if self._connected.is_set():
            info = self._publish_now(self.topics.node_status(), STATUS_STOPPED, 1, True, "status")
            if info is not None:
                try:
                    info.wait_for_publish(timeout)
                    sent = info.is_published()
                except (ValueError, RuntimeError):
                    sent = False
                if not sent:
                    log.warning(
                        "MQTT broker %s did not confirm the '%s' status within %.1f s",
                        self._addr, STATUS_STOPPED, timeout,
                    )
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        if self._sender is not None:
            self._sender.stop(timeout)
        if self._outbox is not None:
            self._outbox.close()
        self._metrics.mqtt_connected.set(0)

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def outbox_state(self) -> dict[str, Any] | None:
        """The outbox's ``state()`` for ``/healthz`` (None without an outbox)."""
        return None if self._outbox is None else self._outbox.state()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected (the ``online`` status has been queued), False on timeout."""
        return self._connected.wait(timeout)

    # ---------------------------------------------------------------- publishing

    def set_camera_status(self, camera: str, online: bool) -> None:
        """Remember a camera's availability; publish it (retained) now if it changed and we are
        connected, and again on every reconnect. A camera not given at construction is added."""
        topic = self.topics.camera_status(camera)
        with self._lock:
            changed = self._cameras.get(camera) != online
            self._cameras[camera] = online
            if changed and self._connected.is_set():
                self._send(topic, _camera_word(online), 1, True, "status")

    def set_retained(self, topic: str, payload: bytes | str | None) -> None:
        """Keep a retained state message (e.g. discovery configs, event ON/OFF) on the broker:
        published now if connected and again on every reconnect, like the status topics.
        ``None`` forgets it (and clears it on the broker with an empty retained message)."""
        with self._lock:
            if payload is None:
                self._retained.pop(topic, None)
                payload = b""
            else:
                self._retained[topic] = payload
            if self._connected.is_set():
                self._send(topic, payload, 1, True, "status")

    def subscribe(self, topic: str, callback: Callable[[str, bytes, bool], None], qos: int = 1) -> None:
        """Receive messages matching ``topic``: ``callback(topic, payload, retained)`` runs on paho's
        loop thread (keep it short; an exception is logged, not raised). Subscribed now if
        connected and again on every (re)connect, like the retained state."""

        def on_message(_client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                callback(msg.topic, bytes(msg.payload), bool(msg.retain))
            except Exception:  # a consumer's bug must not kill paho's loop thread
                log.exception("handler for MQTT topic %s failed", msg.topic)

        with self._lock:
            self._subscriptions[topic] = qos
            self._client.message_callback_add(topic, on_message)
            if self._connected.is_set():
                self._client.subscribe(topic, qos)

    def forget_camera(self, camera: str) -> None:
        """A camera removed by a config reload: publish it ``offline`` (retained) and stop
        re-sending its status on reconnect."""
        topic = self.topics.camera_status(camera)
        with self._lock:
            self._cameras.pop(camera, None)
            if self._connected.is_set():
                self._send(topic, _camera_word(False), 1, True, "status")

    def clear_camera(self, camera: str) -> list[str]:
        """A camera removed by a config reload: stop re-sending its retained state on reconnect and
        clear it on the broker with empty retained messages (QoS 1; queued while disconnected): its
        status, snapshot, stats and every retained topic of it this process set (``<label>/active``).
        Returns the topics cleared."""
        prefix = self.topics.camera_prefix(camera)
        with self._lock:
            self._cameras.pop(camera, None)
            remembered = [t for t in self._retained if t.startswith(prefix)]
            for topic in remembered:
                del self._retained[topic]
            topics = list(dict.fromkeys([*self.topics.camera_retained(camera), *remembered]))
            for topic in topics:
                self._send(topic, b"", 1, True, "status")
        return topics

    def publish_detections(self, dets: Detections) -> None:
        """Publish one frame's detections (skipped when empty unless ``publish_empty``)."""
        if not dets.items and not self._cfg.publish_empty:
            return
        capture_to_publish_ms = (time.monotonic_ns() - dets.t_mono_ns) / 1e6
        try:
            payload = to_payload(dets, capture_to_publish_ms)
        except (ValueError, TypeError) as exc:
            self._count_failure("detections")
            if not self._payload_error_logged:
                self._payload_error_logged = True
                log.error("cannot encode detections of camera %s: %s", dets.camera, exc)
            return
        self._send(self.topics.detections(dets.camera), payload, self._cfg.qos, False, "detections")

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, kind: str = "other"
    ) -> bool:
        """Publish any message. True when it was accepted: stored in the outbox (QoS>=1 with an
        outbox), sent, or queued in paho's memory (QoS>=1 without one) until the broker is back.
        False when it was dropped (counted): QoS 0 while disconnected, a bad topic, after stop()."""
        return self._send(topic, payload, qos, retain, kind)

    def _send(self, topic: str, payload: bytes | str, qos: int, retain: bool, kind: str) -> bool:
        """The single choke point for outgoing messages: the outbox (QoS>=1, not a status, see
        ``Outbox.takes``) or paho directly. A payload over ``max_payload_bytes`` is shrunk (snapshots)
        or parked first. The outbox itself falls back to memory when its disk fails; should even that
        fail (closed), the message goes to paho directly. Direct QoS>=1 messages other than retained
        state are refused (counted) past ``MAX_QUEUED_MESSAGES`` while disconnected."""
        if self._stopping or not self._started:
            self._count_failure(kind)
            return False
        fitted = self._fit(topic, payload, qos, retain, kind)
        if fitted is None:
            return False
        payload = fitted
        outbox, sender = self._outbox, self._sender
        if outbox is not None and sender is not None and outbox.takes(kind, qos):
            try:
                _check_publishable(topic, payload)
                outbox.add(topic, payload, qos, retain, kind)
            except ValueError as exc:
                self._count_failure(kind)
                log.warning("cannot publish to MQTT topic %r: %s", topic, exc)
                return False
            except OutboxError as exc:
                if not self._outbox_failing:
                    self._outbox_failing = True
                    log.error("%s; sending without the outbox (kept in memory only) until it works again", exc)
            else:
                if self._outbox_failing:
                    self._outbox_failing = False
                    log.info("MQTT outbox %s is writable again", outbox.path)
                sender.wake()
                self._metrics.mqtt_published.labels(kind=kind).inc()
                return True
        if qos > 0 and kind != "status" and not self._connected.is_set() and _paho_queued(self._client) >= \
                MAX_QUEUED_MESSAGES:
            self._count_failure(kind)
            if not self._queue_full_logged:
                self._queue_full_logged = True
                log.warning("MQTT broker %s away: %d messages queued in memory; dropping new %s messages "
                            "(counted in edgedet_mqtt_publish_failures_total)", self._addr, MAX_QUEUED_MESSAGES, kind)
            return False
        return self._publish_now(topic, payload, qos, retain, kind) is not None

    def _fit(self, topic: str, payload: bytes | str, qos: int, retain: bool, kind: str) -> bytes | str | None:
        """The payload within ``max_payload_bytes`` (a snapshot re-encoded), or None: parked."""
        limit = self._cfg.max_payload_bytes
        size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
        if size <= limit:
            return payload
        if kind == "snapshot" and isinstance(payload, bytes):
            smaller = fit_jpeg(payload, limit)
            if smaller is not None:
                log.debug("snapshot for %s re-encoded from %d to %d bytes", topic, size, len(smaller))
                return smaller
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        if self._outbox is not None:
            try:
                self._outbox.park_new(topic, data, qos, retain, kind, "too_large")
            except OutboxError:
                pass
        self._count_parked(OutboxMessage(0, topic, data, qos, retain, time.time(), kind), "too_large")
        return None

    def _count_parked(self, msg: OutboxMessage, reason: str) -> None:
        kind = msg.kind if msg.kind in OUTBOX_KINDS else "other"
        self._metrics.mqtt_parked.labels(kind=kind, reason=reason).inc()
        if reason == "too_large" and kind not in self._parked_logged:
            self._parked_logged.add(kind)
            log.warning("MQTT %s message for %r is %d bytes, over mqtt.max_payload_bytes=%d; parked it unsent "
                        "(edgedet_mqtt_parked_total; logged once per kind)", kind, msg.topic, len(msg.payload),
                        self._cfg.max_payload_bytes)

    def _publish_now(
        self, topic: str, payload: bytes | str, qos: int, retain: bool, kind: str
    ) -> mqtt.MQTTMessageInfo | None:
        """Hand one message to paho; the message info, or None when it was dropped (counted)."""
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # invalid topic, payload too large
            self._count_failure(kind)
            log.warning("cannot publish to MQTT topic %r: %s", topic, exc)
            return None
        rc = info.rc
        # QoS>=1 while disconnected: paho keeps the message (in memory, bounded) and sends it
        # after reconnecting, so NO_CONN is "queued", not "lost". QoS 0 is dropped.
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            self._metrics.mqtt_published.labels(kind=kind).inc()
            if retain and qos > 0 and kind == "status":
                with self._mids_lock:
                    if not (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and info.is_published()):  # NO_CONN: raises
                        self._state_mids.add(info.mid)
            return info
        self._count_failure(kind)
        log.debug("MQTT publish to %s dropped: %s", topic, mqtt.error_string(rc))
        return None

    def _count_failure(self, kind: str) -> None:
        self._metrics.mqtt_publish_failures.labels(kind=kind).inc()

    # ---------------------------------------------------------------- paho callbacks (loop thread)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._mids_lock:
            self._state_mids.discard(mid)
        if self._sender is not None:
            self._sender.on_publish(client, userdata, mid, reason, properties)

    def _drop_stuck(self, client: mqtt.Client) -> None:
        """A direct message (not in the outbox) still first in paho's resend queue at
        ``PARK_AFTER_DISCONNECTS`` connects in a row is what the broker drops us for: drop it."""
        with client._out_message_mutex:
            first = next(iter(client._out_messages.values()), None)
        if first is None:
            self._stuck = None
            return
        strikes = self._stuck[1] + 1 if self._stuck is not None and self._stuck[0] == first.mid else 1
        self._stuck = (first.mid, strikes)
        if strikes < PARK_AFTER_DISCONNECTS:
            return
        self._stuck = None
        _forget_in_paho(client, {first.mid})
        kind = "detections" if first.topic.endswith("/detections") else "other"
        payload = bytes(first.payload)
        log.warning("MQTT message for %r (%d bytes) was unacknowledged at %d connects in a row; dropped it "
                    "(edgedet_mqtt_parked_total) so the messages behind it go out", first.topic, len(payload),
                    PARK_AFTER_DISCONNECTS)
        self._count_parked(OutboxMessage(0, first.topic, payload, first.qos, first.retain, time.time(), kind),
                           "disconnects")

    def _set_state(self, state: str) -> bool:
        changed = state != self._state
        self._state = state
        return changed

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            name = str(reason)
            if self._set_state(f"refused:{name}"):
                hint = _REFUSAL_HINTS.get(name, "retrying")
                log.error("MQTT broker %s refused connection: %s (%s)", self._addr, name, hint)
            return
        if self._set_state("up"):
            log.info("connected to MQTT broker %s as %s", self._addr, self.client_id)
        # A connect that completes while stop() runs must not leave a retained "online" behind.
        node_word = STATUS_STOPPED if self._stopped else STATUS_ONLINE
        with self._mids_lock:
            stale, self._state_mids = self._state_mids, set()
        if self._sender is not None:
            stale |= self._sender.take_stale_mids()
        _forget_in_paho(client, stale)  # before the fresh state: paho re-sends what is left after on_connect
        self._drop_stuck(client)
        self._queue_full_logged = False
        with self._lock:
            self._connected.set()
            self._send(self.topics.node_status(), node_word, 1, True, "status")
            for camera, online in self._cameras.items():
                self._send(self.topics.camera_status(camera), _camera_word(online), 1, True, "status")
            for topic, payload in self._retained.items():
                self._send(topic, payload, 1, True, "status")
            for topic, qos in self._subscriptions.items():
                client.subscribe(topic, qos)
        if self._sender is not None:
            self._sender.connected()  # replay the outbox after the statuses
        self._metrics.mqtt_connected.set(1)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block: the cause is the current exception.
        exc = sys.exc_info()[1]
        if self._set_state("down"):
            log.warning(
                "cannot reach MQTT broker %s (%s); retrying in the background every %d-%d s",
                self._addr, exc or "connection failed", RECONNECT_MIN_S, RECONNECT_MAX_S,
            )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if self._sender is not None:
            self._sender.disconnected()
        self._metrics.mqtt_connected.set(0)
        if self._stopping:
            self._set_state("down")
            log.info("disconnected from MQTT broker %s", self._addr)
        elif self._state == "up" and self._set_state("down"):
            detail = str(reason)
            if detail == "Unspecified error":  # paho's name for a closed/reset socket
                detail = "connection closed"
            log.warning(
                "lost connection to MQTT broker %s (%s); reconnecting in the background", self._addr, detail
            )


def _forget_in_paho(client: mqtt.Client, mids: set[int]) -> None:
    """Drop messages from paho's resend queue. paho has no public API for it (2.x keeps them in
    ``_out_messages`` under ``_out_message_mutex``); tests/integration/test_broker_faults.py checks
    the effect against a real broker, so a paho upgrade that changes this fails loudly there."""
    if not mids:
        return
    with client._out_message_mutex:
        for mid in mids:
            client._out_messages.pop(mid, None)


def _paho_queued(client: mqtt.Client) -> int:
    """Messages in paho's queue (sent and unacknowledged, or waiting); see ``_forget_in_paho``."""
    return len(client._out_messages)


def _camera_word(online: bool) -> str:
    return STATUS_ONLINE if online else STATUS_OFFLINE


def _check_publishable(topic: str, payload: bytes | str) -> None:
    """paho's own checks, done before a message is stored (so a stored row can always be sent)."""
    if not topic:
        raise ValueError("Invalid topic.")
    if "+" in topic or "#" in topic:
        raise ValueError("Publish topic cannot contain wildcards.")
    if len(topic.encode("utf-8")) > 65535:
        raise ValueError("Invalid topic.")
    size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
    if size > _MAX_PAYLOAD:
        raise ValueError("Payload too large.")
