"""MQTT output: the pure ``to_payload()`` and the ``MqttPublisher`` (availability, LWT, reconnect).

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

Delivery (QoS >= 1) with an ``Outbox`` (see ``edgedet/outbox.py``): ``_send`` stores the message
on disk and returns; the ``mqtt-outbox`` thread hands stored rows to paho in id order, at most
``OUTBOX_WINDOW`` unacknowledged at a time, and deletes a row on its PUBACK. After every
(re)connect -- once ``online`` and the camera statuses are out -- it resends the whole outbox from
the oldest row, so live messages never overtake a backlog. At-least-once: rows in flight when a
connection drops are sent again (paho may also resend its in-memory copy); consumers dedupe on
``(topic, seq, ts)``. Status topics bypass the outbox: they are re-published fresh on each connect.
The client connects with a unique client id and a clean session: durability comes from the
outbox, so no broker-side publisher session (``clean_session=False``) is needed.
Without an outbox, QoS >= 1 messages are queued in paho's memory only (lost on a restart).
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgedet.errors import ConfigError
from edgedet.outputs.outbox import Outbox, OutboxError
from edgedet.outputs.payload import to_payload
from edgedet.outputs.topics import Topics
from edgedet.types import Detections

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = logging.getLogger("edgedet.publish")  # a stable stage name: journald filters and docs use it

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"

#: Upper bound of QoS>=1 messages paho keeps in memory while the broker is away.
MAX_QUEUED_MESSAGES = 10_000
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: Outbox rows handed to paho and not yet acknowledged, at most. paho's own in-flight limit is
#: set a little higher so status messages are never stuck behind a full replay window.
OUTBOX_WINDOW = 100
_PAHO_INFLIGHT = OUTBOX_WINDOW + 20
_MAX_PAYLOAD = 268_435_455  # MQTT's limit; paho raises ValueError above it



# --------------------------------------------------------------------------- protocols


class TlsSettings(Protocol):
    """What the publisher reads from ``config.TlsConfig``."""

    @property
    def ca(self) -> str | os.PathLike[str] | None: ...
    @property
    def cert(self) -> str | os.PathLike[str] | None: ...
    @property
    def key(self) -> str | os.PathLike[str] | None: ...
    @property
    def insecure(self) -> bool: ...


class MqttSettings(Protocol):
    """What the publisher reads from ``config.MqttConfig`` (``password`` already resolved)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls(self) -> TlsSettings | None: ...
    @property
    def topic_prefix(self) -> str: ...
    @property
    def qos(self) -> int: ...
    @property
    def keepalive(self) -> int: ...
    @property
    def publish_empty(self) -> bool: ...


class PublishMetrics(Protocol):
    """The subset of ``metrics.Metrics`` the publisher updates."""

    @property
    def mqtt_published(self) -> Counter: ...
    @property
    def mqtt_publish_failures(self) -> Counter: ...
    @property
    def mqtt_connected(self) -> Gauge: ...


# --------------------------------------------------------------------------- TLS


def _check_readable(field: str, path: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def _validated_tls(tls: TlsSettings) -> tuple[str | None, str | None, str | None]:
    """Check the TLS files up front so a bad one is a ConfigError naming its field."""
    ca = os.fspath(tls.ca) if tls.ca else None
    cert = os.fspath(tls.cert) if tls.cert else None
    key = os.fspath(tls.key) if tls.key else None
    if key and not cert:
        raise ConfigError("mqtt.tls.key: set without mqtt.tls.cert")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        _check_readable("mqtt.tls.ca", ca)
        try:
            probe.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"mqtt.tls.ca: {ca} is not a usable PEM CA bundle ({exc.reason})") from None
    if cert:
        _check_readable("mqtt.tls.cert", cert)
        if key:
            _check_readable("mqtt.tls.key", key)
        try:
            probe.load_cert_chain(certfile=cert, keyfile=key)
        except ssl.SSLError as exc:
            field = "mqtt.tls.cert/key" if key else "mqtt.tls.cert"
            raise ConfigError(
                f"{field}: cannot load client certificate {cert}"
                f"{' with key ' + key if key else ''} ({exc.reason or 'not a PEM certificate and private key'})"
            ) from None
    return ca, cert, key


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
        cfg: MqttSettings,
        node_id: str,
        cameras: Iterable[str],
        metrics: PublishMetrics | None = None,
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
        cfg: MqttSettings,
        node_id: str,
        cameras: Iterable[str],
        metrics: PublishMetrics | None,
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
        if metrics is not None:  # export zeros from the start so rate() and alerts work at once
            for kind in ("detections", "status"):
                metrics.mqtt_published.labels(kind=kind)
                metrics.mqtt_publish_failures.labels(kind=kind)

        self.client_id = client_id or cfg.client_id or f"edgedet-{node_id}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311
        )
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            ca, cert, key = _validated_tls(cfg.tls)
            try:
                client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"mqtt.tls: cannot set up TLS: {exc}") from None
            if cfg.tls.insecure:
                client.tls_insecure_set(True)  # no hostname check; the chain is still verified
        client.will_set(self.topics.node_status(), STATUS_OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._sender: _OutboxSender | None = None
        if outbox is not None:
            client.max_inflight_messages_set(_PAHO_INFLIGHT)
            self._sender = _OutboxSender(outbox, client, self._addr)
            client.on_publish = self._sender.on_publish
            client.on_pre_connect = self._sender.on_pre_connect

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Begin connecting in the background; returns at once even with no broker."""
        with self._life_lock:
            if self._started or self._stopped:
                return
            self._started = True
        if self._metrics is not None:
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
        if self._metrics is not None:
            self._metrics.mqtt_connected.set(0)

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

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

    def forget_camera(self, camera: str) -> None:
        """A camera removed by a config reload: publish it ``offline`` (retained) and stop
        re-sending its status on reconnect."""
        topic = self.topics.camera_status(camera)
        with self._lock:
            self._cameras.pop(camera, None)
            if self._connected.is_set():
                self._send(topic, _camera_word(False), 1, True, "status")

    def publish_detections(self, dets: Detections) -> None:
        """Publish one frame's detections (skipped when empty unless ``publish_empty``)."""
        if not dets.items and not self._cfg.publish_empty:
            return
        capture_to_publish_ms = (time.monotonic_ns() - dets.t_mono_ns) / 1e6
        try:
            payload = to_payload(dets, time.time(), capture_to_publish_ms)
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
        ``Outbox.takes``) or paho directly. If the outbox cannot be written (disk full), the
        message goes to paho directly: it is still sent, but only kept in memory."""
        if self._stopping or not self._started:
            self._count_failure(kind)
            return False
        outbox, sender = self._outbox, self._sender
        if outbox is not None and sender is not None and outbox.takes(kind, qos):
            try:
                _check_publishable(topic, payload)
                outbox.add(topic, payload, qos, retain)
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
                if self._metrics is not None:
                    self._metrics.mqtt_published.labels(kind=kind).inc()
                return True
        return self._publish_now(topic, payload, qos, retain, kind) is not None

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
            if self._metrics is not None:
                self._metrics.mqtt_published.labels(kind=kind).inc()
            return info
        self._count_failure(kind)
        log.debug("MQTT publish to %s dropped: %s", topic, mqtt.error_string(rc))
        return None

    def _count_failure(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.mqtt_publish_failures.labels(kind=kind).inc()

    # ---------------------------------------------------------------- paho callbacks (loop thread)

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
        with self._lock:
            self._connected.set()
            self._send(self.topics.node_status(), node_word, 1, True, "status")
            for camera, online in self._cameras.items():
                self._send(self.topics.camera_status(camera), _camera_word(online), 1, True, "status")
            for topic, payload in self._retained.items():
                self._send(topic, payload, 1, True, "status")
        if self._sender is not None:
            self._sender.connected()  # replay the outbox after the statuses
        if self._metrics is not None:
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
        if self._metrics is not None:
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


# --------------------------------------------------------------------------- outbox sender


class _OutboxSender:
    """Feeds outbox rows to paho in id order from the ``mqtt-outbox`` thread; removes acked rows.

    Locking (paho calls ``on_publish`` while holding its internal message lock, and
    ``client.publish`` takes that lock):

    * ``_cond`` guards the shared fields below and is never held while calling paho;
      ``on_publish`` only appends the mid and notifies. Acks are matched to rows on this thread,
      after the mid of each publish has been recorded, so an early PUBACK cannot be missed.
    * ``_gate`` is held around "still connected in this generation? then ``client.publish``" and
      taken by ``on_pre_connect``, which paho calls before it opens a new socket (holding none of
      its locks). So no row is written to a reconnecting socket ahead of the replay: rows go out
      only after ``connected()``, which the publisher calls once ``online`` has been queued.
    """

    def __init__(self, outbox: Outbox, client: mqtt.Client, addr: str) -> None:
        self._outbox = outbox
        self._client = client
        self._addr = addr
        self._cond = threading.Condition()
        self._gate = threading.Lock()
        # shared, under _cond
        self._acks: list[int] = []
        self._up = False
        self._gen = 0  # +1 per successful connect: each connect replays from the oldest row
        self._dirty = True  # rows may exist past the cursor (rows from a previous run, too)
        self._stopping = False
        # sender thread only
        self._inflight: dict[int, int] = {}  # paho mid -> row id, until its PUBACK
        self._cursor = 0  # highest row id handed to paho on this connection
        self._replay: tuple[float, int, int] | None = None  # (monotonic start, rows, newest id)
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1f s", thread.name, timeout)

    def wake(self) -> None:
        """A row was added."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def connected(self) -> None:
        with self._cond:
            self._up = True
            self._gen += 1
            self._dirty = True
            self._cond.notify_all()

    def disconnected(self) -> None:
        with self._cond:
            self._up = False
            self._cond.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True), or disconnected / ``timeout`` (False)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._outbox) == 0 or not self._up or self._stopping, timeout)
        return len(self._outbox) == 0

    # ---------------------------------------------------------------- paho callbacks (loop thread)

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acks.append(mid)
            self._cond.notify_all()

    def on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        with self._gate, self._cond:
            self._up = False

    # ---------------------------------------------------------------- sender thread

    def _run(self) -> None:
        gen_seen = 0
        retry_at = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    can_feed = self._up and self._dirty and len(self._inflight) < OUTBOX_WINDOW
                    if self._acks or self._gen != gen_seen or (can_feed and now >= retry_at):
                        break
                    self._cond.wait(retry_at - now if can_feed else None)
                acks, self._acks = self._acks, []
                gen = self._gen
            try:
                if acks:
                    self._ack(acks)
                if gen != gen_seen:
                    gen_seen = gen
                    self._cursor = 0
                    self._start_replay()
                if not self._feed(gen):
                    retry_at = time.monotonic() + 1.0
                self._set_error(None)
            except OutboxError as exc:
                self._set_error(str(exc))
                retry_at = time.monotonic() + 1.0
                self.wake()
            except Exception as exc:  # never let the outbox stop silently; rows stay on disk
                if self._error != repr(exc):
                    log.exception("MQTT outbox sender failed; retrying every second")
                self._error = repr(exc)
                retry_at = time.monotonic() + 1.0
                self.wake()

    def _ack(self, mids: list[int]) -> None:
        rows = [self._inflight.pop(mid) for mid in mids if mid in self._inflight]
        if not rows:
            return  # status messages, or direct sends
        self._outbox.remove(rows)
        with self._cond:
            self._cond.notify_all()  # wait_drained()
        if self._replay is not None:
            started, backlog, newest = self._replay
            ids = self._outbox.id_range()
            if ids is None or ids[0] > newest:  # every row stored before the connect is acknowledged
                log.info("MQTT outbox replay to %s done: %d stored message(s) acknowledged in %.2f s",
                         self._addr, backlog, time.monotonic() - started)
                self._replay = None

    def _start_replay(self) -> None:
        ids = self._outbox.id_range()
        self._replay = None
        if ids is not None:
            backlog = len(self._outbox)
            log.info("MQTT outbox: replaying %d stored message(s) to %s", backlog, self._addr)
            self._replay = (time.monotonic(), backlog, ids[1])

    def _feed(self, gen: int) -> bool:
        """Hand the next rows to paho; False when paho refused one (retry later)."""
        room = OUTBOX_WINDOW - len(self._inflight)
        with self._cond:
            if not (self._up and self._gen == gen and self._dirty and room > 0):
                return True
            self._dirty = False  # wake() after this point sets it again: no lost wake-up
        rows = self._outbox.pending(self._cursor, room)
        more = len(rows) == room
        ok = True
        for row in rows:
            error = ""
            with self._gate:
                with self._cond:
                    current = self._up and self._gen == gen and not self._stopping
                if not current:
                    more = True  # the next connection replays from the oldest row anyway
                    break
                try:
                    info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                except ValueError as exc:  # cannot ever be sent (stored by an older version?)
                    info = None
                    error = str(exc)
            if info is None:
                log.warning("dropping stored MQTT message for %r: %s", row.topic, error)
                self._outbox.remove([row.id])
                self._cursor = row.id
                continue
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # NO_CONN: paho keeps it in memory and resends it on reconnect; the replay sends
                # it again too (at-least-once), so it counts as in flight either way.
                self._inflight[info.mid] = row.id
                self._cursor = row.id
            else:  # paho's queue is full: try again shortly, in order
                log.debug("paho refused outbox row %d: %s", row.id, mqtt.error_string(info.rc))
                more, ok = True, False
                break
        if more:
            with self._cond:
                self._dirty = True
        return ok

    def _set_error(self, error: str | None) -> None:
        if error == self._error:
            return
        if error is not None:
            log.error("MQTT outbox: %s; retrying every second", error)
        elif self._error is not None:
            log.info("MQTT outbox works again")
        self._error = error
