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
choke point where an on-disk outbox can be inserted later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgedet.errors import ConfigError
from edgedet.types import Detections

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"

#: Upper bound of QoS>=1 messages paho keeps in memory while the broker is away.
MAX_QUEUED_MESSAGES = 10_000
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30

_LATENCY_STAGES = ("preprocess", "inference", "postprocess", "queue_wait")
_SCHEMA_FILE = "detections.schema.json"


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


# --------------------------------------------------------------------------- topics


def _check_name(what: str, value: str, *, levels: bool = False) -> None:
    """Reject names that would change the topic structure (wildcards, extra or empty levels)."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    forbidden = ("+", "#", "\0") if levels else ("/", "+", "#", "\0")
    bad = [c for c in forbidden if c in value]
    if bad:
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic (contains {bad[0]!r})")
    if levels and "" in value.split("/"):
        raise ValueError(f"{what} {value!r} has an empty level (leading, trailing or double '/')")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one node. ``prefix`` may have several levels (``site/edgedet``)."""

    prefix: str
    node: str

    def __post_init__(self) -> None:
        _check_name("MQTT topic prefix", self.prefix, levels=True)
        _check_name("node id", self.node)

    def node_status(self) -> str:
        return f"{self.prefix}/{self.node}/status"

    def camera_status(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/status"

    def detections(self, camera: str) -> str:
        _check_name("camera name", camera)
        return f"{self.prefix}/{self.node}/{camera}/detections"


# --------------------------------------------------------------------------- payload


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    value = float(seconds) * 1000.0
    return round(value, 2) if math.isfinite(value) else None


def _iso_utc_ms(t_wall: float) -> str:
    stamp = datetime.fromtimestamp(t_wall, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def to_payload(dets: Detections, published_wall: float, capture_to_publish_ms: float) -> bytes:
    """The JSON message for one frame (compact, UTF-8). Pure: same input, same bytes.

    ``timestamp`` / ``ts`` are the capture time (``dets.t_wall``); latencies are milliseconds
    rounded to 0.01, ``null`` for a stage that is missing from ``dets.timings`` or not finite.
    ``published_wall`` is accepted for API stability but not part of the message: the publish
    time is ``ts + latency_ms.capture_to_publish / 1000``.
    Raises ValueError for values JSON cannot carry (a NaN score, for instance).
    """
    del published_wall  # documented above: derivable from ts + capture_to_publish
    items = []
    for det in dets.items:
        d = det.as_dict()
        d["label"] = str(d["label"])
        d["class_id"] = int(d["class_id"])
        items.append(d)
    latency: dict[str, float | None] = {"capture_to_publish": _ms(capture_to_publish_ms / 1000.0)}
    for stage in _LATENCY_STAGES:
        latency[stage] = _ms(dets.timings.get(stage))
    message: dict[str, Any] = {
        "camera": dets.camera,
        "seq": int(dets.seq),
        "timestamp": _iso_utc_ms(dets.t_wall),
        "ts": round(float(dets.t_wall), 6),
        "width": int(dets.width),
        "height": int(dets.height),
        "model": dets.model,
        "detections": items,
        "latency_ms": latency,
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the detections message; a fresh dict per call."""
    text = resources.files("edgedet.schemas").joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


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
                f"{' with key ' + key if key else ''} ({exc.reason})"
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
        self._lock = threading.Lock()  # guards _cameras and the order of camera-status publishes
        self._life_lock = threading.Lock()
        self._connected = threading.Event()
        self._started = False
        self._stopped = False
        self._stopping = False
        self._state = "new"  # new | up | down | refused:<reason>; logged on change only
        self._payload_error_logged = False
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
        self._client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish retained ``stopped`` (waiting up to ``timeout`` s for it), disconnect, end the loop."""
        with self._life_lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if not started:
            return
        if self._connected.is_set():
            info = self._send(self.topics.node_status(), STATUS_STOPPED, 1, True, "status")
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
        """Publish any message. True when the client accepted it (sent, or queued in memory
        for QoS>=1 until the broker is back); False when it was dropped (counted)."""
        return self._send(topic, payload, qos, retain, kind) is not None

    def _send(
        self, topic: str, payload: bytes | str, qos: int, retain: bool, kind: str
    ) -> mqtt.MQTTMessageInfo | None:
        """The single choke point for outgoing messages (where an outbox would go)."""
        if self._stopping or not self._started:
            self._count_failure(kind)
            return None
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
