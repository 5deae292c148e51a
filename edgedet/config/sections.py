"""The config sections: frozen dataclasses, one per part of the daemon, and the whole :class:`Config`.

Each field's type says what YAML it accepts; its metadata (``meta(...)``) adds checks, parsers
and masking; ``validate()`` holds the cross-field rules. The builder
(:mod:`edgedet.config.builder`) turns YAML values into these. A stage receives its own section
(``cfg.mqtt``, ``cfg.events``, ...), never the whole ``Config``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from edgedet.config.builder import Section, YamlValue, element, meta, scalar
from edgedet.config.detect import DetectConfig, DetectOverrides, LocationConfig, ProfileWhen
from edgedet.config.fields import (
    CameraKind,
    at_least,
    at_least_chars,
    between,
    default_node_id,
    default_state_dir,
    is_loopback,
    label_key,
    not_empty,
    parse_dir,
    parse_file,
    parse_model_path,
    parse_url,
    positive,
    url_kind,
    valid_classes,
    valid_fourcc,
    valid_topic_level,
    valid_topic_prefix,
    valid_torch_device,
)
from edgedet.config.problems import INVALID, Bad, Ctx, Mismatch, PathT, show
from edgedet.errors import first_line
from edgedet.redact import url_secrets

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_POINT_EXPECTED = "expected a point [x, y]"


# --------------------------------------------------------------------------- polygons


@dataclass(frozen=True, slots=True)
class Polygon(YamlValue):
    """A zone or mask outline: 3 or more ``(x, y)`` points.

    ``pixels`` is False when every coordinate is within 0..1 (fractions of the frame width and
    height) and True when any coordinate is above 1 (source-frame pixels). Written in YAML as
    ``[[x, y], [x, y], ...]``.
    """

    points: tuple[tuple[float, float], ...]
    pixels: bool

    def to_list(self) -> list[list[float]]:
        return [[x, y] for x, y in self.points]

    def to_plain(self) -> list[list[float]]:
        return self.to_list()

    @classmethod
    def from_yaml(cls, value: Any, path: PathT, ctx: Ctx) -> Any:
        """``[[x, y], ...]`` -> Polygon; problems with single points are reported at their own line."""
        if not isinstance(value, list):
            raise Mismatch("a list of [x, y] points", value)
        points: list[tuple[float, float]] = []
        ok = True
        for i, item in enumerate(value):
            point_path = (*path, i)
            if item is INVALID:
                ok = False
                continue
            if not isinstance(item, list) or len(item) != 2:
                count = len(item) if isinstance(item, list) else 0
                got = f"{count} value{'' if count == 1 else 's'}" if isinstance(item, list) else show(item)
                ctx.add(point_path, f"{_POINT_EXPECTED} (got {got})")
                ok = False
                continue
            coords: list[float] = []
            for j, raw in enumerate(item):
                try:
                    number = scalar(float, raw) if raw is not INVALID else INVALID
                except Mismatch as exc:
                    ctx.add((*point_path, j), exc.render())
                    number = INVALID
                if number is not INVALID and not number >= 0:
                    ctx.add((*point_path, j), f"coordinates must be >= 0 (got {show(number)})")
                    number = INVALID
                if number is INVALID:
                    ok = False
                else:
                    coords.append(number)
            if len(coords) == 2:
                points.append((coords[0], coords[1]))
        if not ok:
            return INVALID
        if len(points) < 3:
            raise Bad(f"a polygon needs at least 3 points (got {len(points)})")
        if _polygon_area(points) == 0.0:
            raise Bad("the polygon has no area (its points are on one line)")
        pixels = any(v > 1.0 for point in points for v in point)
        return cls(tuple(points), pixels)


def _polygon_area(points: list[tuple[float, float]]) -> float:
    twice = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True))
    return abs(twice) / 2.0


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CameraTracking(Section):
    """When a camera's track is lost: after this many processed frames or seconds without a match,
    whichever comes first. A camera processed every N seconds wants max_age_s of a few N."""

    max_age_frames: int = field(default=10, metadata=meta(check=at_least(1)))
    max_age_s: float = field(default=3.0, metadata=meta(check=positive))


def _no_base_profile(profiles: dict[str, Any]) -> str | None:
    return "'base' names the camera's own settings; give the profile another name" if "base" in profiles else None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ProfileConfig(Section):
    """Per-camera overrides active while ``when`` matches (edgedet/profiles.py); unset keys keep the camera's
    values. ``events``: label -> threshold overrides on top of ``events`` for this camera."""

    when: ProfileWhen
    fps_limit: float | None = field(default=None, metadata=meta(check=positive))
    labels: list[str] | None = None
    zones: dict[str, Polygon] | None = None
    masks: list[Polygon] | None = None
    events: dict[str, EventOverrides] | None = field(default=None, metadata=meta(build=lambda v, p, c: _build_labels(
        v, p, c)))
    detect: DetectOverrides | None = None

    def apply(self, cam: CameraConfig) -> CameraConfig:
        """The camera's settings under this profile."""
        changes: dict[str, Any] = {k: getattr(self, k) for k in ("fps_limit", "labels", "zones", "masks")
                                   if getattr(self, k) is not None}
        if self.detect is not None:
            changes["detect"] = self.detect.apply(cam.detect)
        return dataclasses.replace(cam, **changes)

    def apply_events(self, events: EventsConfig) -> EventsConfig:
        """``events`` with this profile's per-label overrides merged over the configured ones."""
        labels = dict(events.labels)
        for label, extra in (self.events or {}).items():
            labels[label] = dataclasses.replace(labels.get(label) or EventOverrides(), **extra.to_dict(masked=False))
        return dataclasses.replace(events, labels=labels)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CameraConfig(Section):
    """One video source. ``kind`` is derived from ``url``."""

    url: str | int = field(metadata=meta(parse=parse_url, url=True))
    enabled: bool = True
    fps_limit: float | None = field(default=None, metadata=meta(check=positive))
    transport: Literal["tcp", "udp"] = field(default="tcp", metadata=meta(normalise=str.lower))
    width: int | None = field(default=None, metadata=meta(check=at_least(1)))
    height: int | None = field(default=None, metadata=meta(check=at_least(1)))
    fourcc: str | None = field(default=None, metadata=meta(check=valid_fourcc))
    loop: bool = False
    realtime: bool = True
    stall_timeout_s: float = field(default=10.0, metadata=meta(check=positive))
    # Longest wait between reconnect attempts (full-jitter exponential backoff from 1 s).
    reconnect_max_s: float = field(default=30.0, metadata=meta(check=at_least(1)))
    # Report (metric + log) a camera whose image has not changed for this long; null disables.
    frozen_after_s: float | None = field(default=60.0, metadata=meta(check=positive))
    queue_size: int = field(default=1, metadata=meta(check=between(1, 16)))
    zones: dict[str, Polygon] = field(default_factory=dict)
    masks: list[Polygon] = field(default_factory=list)
    tracking: CameraTracking = field(default_factory=lambda: CameraTracking())
    labels: list[str] | None = None  # labels this camera reports (None: every label the model gives)
    detect: DetectConfig = field(default_factory=lambda: DetectConfig())
    profiles: dict[str, ProfileConfig] = field(default_factory=dict, metadata=meta(check=_no_base_profile))

    @property
    def idle_limit_s(self) -> float:
        """The longest gap between processed frames that is still healthy: the stall timeout, plus
        the floor interval when this camera (or one of its profiles) runs in motion mode."""
        blocks = [self.detect] + [p.detect.apply(self.detect) for p in self.profiles.values() if p.detect]
        return self.stall_timeout_s + max((d.max_interval_s for d in blocks if d.mode == "motion"), default=0.0)

    @property
    def kind(self) -> CameraKind:
        """``rtsp`` (rtsp/rtsps), ``http`` (http/https), ``file`` or ``device`` (index or /dev/...)."""
        return url_kind(self.url)

    def validate(self) -> list[tuple[str, str]]:
        kind = self.kind
        out: list[tuple[str, str]] = []
        if kind != "file":
            if self.loop:
                out.append(("loop", f"only applies to file sources (this camera is {kind})"))
            if not self.realtime:
                out.append(("realtime", f"only applies to file sources (this camera is {kind})"))
        if kind != "device":
            device_only = {"width": self.width, "height": self.height, "fourcc": self.fourcc}
            for key, value in device_only.items():
                if value is not None:
                    out.append((key, f"only applies to device (USB) cameras (this camera is {kind})"))
        if kind != "rtsp" and self.transport != "tcp":
            out.append(("transport", f"only applies to rtsp cameras (this camera is {kind})"))
        return out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ModelConfig(Section):
    path: str = field(metadata=meta(parse=parse_model_path))
    device: str = field(default="cpu", metadata=meta(check=valid_torch_device))
    # auto: by model.path (.onnx -> onnxruntime, *_openvino_model/ or .xml -> openvino,
    # *_ncnn_model/ or .ncnn.param -> ncnn, else torchscript)
    backend: Literal["auto", "torchscript", "onnxruntime", "openvino", "ncnn"] = "auto"
    half: bool = False
    conf: float = field(default=0.25, metadata=meta(check=between(0, 1)))
    iou: float = field(default=0.7, metadata=meta(check=between(0, 1)))
    classes: list[str | int] | None = field(default=None, metadata=meta(check=valid_classes))
    max_det: int = field(default=300, metadata=meta(check=at_least(1)))

    def validate(self) -> list[tuple[str, str]]:
        from edgedet.model import resolve_backend

        kind = resolve_backend(self.path, self.backend)
        if self.half and self.device == "cpu" and kind != "ncnn":
            return [("half", "half precision needs a CUDA device")]
        if kind in ("openvino", "ncnn") and self.device != "cpu":
            return [("device", f"the {kind} backend runs on cpu only (got {self.device!r})")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WorkersConfig(Section):
    count: int | None = field(default=None, metadata=meta(check=at_least(1)))
    threads_per_worker: int | None = field(default=None, metadata=meta(check=at_least(1)))
    # Cross-camera micro-batching (for GPUs): gather up to batch_size frames from different
    # cameras, waiting at most batch_timeout_ms after the first, and run them in one forward.
    batch_size: int = field(default=1, metadata=meta(check=between(1, 256)))
    batch_timeout_ms: float = field(default=5.0, metadata=meta(check=between(0, 1000)))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TlsConfig(Section):
    ca: str | None = field(default=None, metadata=meta(parse=parse_file))
    cert: str | None = field(default=None, metadata=meta(parse=parse_file))
    key: str | None = field(default=None, metadata=meta(parse=parse_file))
    insecure: bool = False

    def validate(self) -> list[tuple[str, str]]:
        if self.cert is not None and self.key is None:
            return [("cert", "a client certificate needs its private key (set tls.key too)")]
        if self.key is not None and self.cert is None:
            return [("key", "a private key needs its client certificate (set tls.cert too)")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MqttConfig(Section):
    """Broker connection. After loading, ``password`` holds the password_file content if set."""

    host: str = field(default="127.0.0.1", metadata=meta(check=not_empty))
    port: int = field(default=1883, metadata=meta(check=between(1, 65535)))
    client_id: str | None = field(default=None, metadata=meta(check=not_empty))
    username: str | None = None
    password: str | None = field(default=None, metadata=meta(secret=True))
    password_file: str | None = field(default=None, metadata=meta(parse=parse_file))
    tls: TlsConfig | None = None
    topic_prefix: str = field(default="edgedet", metadata=meta(check=valid_topic_prefix))
    qos: int = field(default=1, metadata=meta(check=between(0, 2)))
    keepalive: int = field(default=60, metadata=meta(check=at_least(5)))
    publish_empty: bool = False
    max_payload_bytes: int = field(default=256 * 1024, metadata=meta(check=between(1024, 268_435_455)))

    def validate(self) -> list[tuple[str, str]]:
        if self.password is not None and self.password_file is not None:
            return [("password_file", "set password or password_file, not both")]
        if self.username is None:
            for key, value in (("password", self.password), ("password_file", self.password_file)):
                if value is not None:
                    return [(key, "a password needs a username (set mqtt.username)")]
        return []

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        out = Section.to_dict(self, masked)
        if self.password_file is not None:
            out["password"] = None  # the file's content is never shown, masked or not
        return out

    def finish(self, ctx: Ctx, path: PathT) -> Any:
        """Read ``password_file`` into ``password``; INVALID (problem reported) when it cannot be read."""
        if self.password_file is None:
            return self
        try:
            secret = Path(self.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            if not ctx.check_files:
                return self
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            ctx.add((*path, "password_file"), f"cannot read {self.password_file}: {reason}")
            return INVALID
        if not secret:
            ctx.add((*path, "password_file"), f"the file is empty: {self.password_file}")
            return INVALID
        return dataclasses.replace(self, password=secret)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class MetricsConfig(Section):
    enabled: bool = True
    host: str = field(default="127.0.0.1", metadata=meta(check=not_empty))
    port: int = field(default=9108, metadata=meta(check=between(0, 65535)))


def _confirm_rule(confirm: int, window: int) -> str:
    return f"confirm_frames ({confirm}) must be <= window_frames ({window})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventThresholds(Section):
    """When detections of one label become an event (K of N frames) and when it updates / ends."""

    confirm_frames: int = field(default=3, metadata=meta(check=at_least(1)))
    window_frames: int = field(default=5, metadata=meta(check=at_least(1)))
    min_score: float = field(default=0.5, metadata=meta(check=between(0, 1)))
    min_area: float = field(default=0.0, metadata=meta(check=between(0, 1)))
    clear_after_s: float = field(default=10.0, metadata=meta(check=positive))
    update_interval_s: float = field(default=5.0, metadata=meta(check=at_least(0)))
    # frames: K of N frames (confirm_frames of window_frames). tube: the track persists in K of N frames
    # and its box is stable or growing (smoke; see edgedet/events/tubes.py).
    confirm: Literal["frames", "tube"] = "frames"
    tube_min_growth: float = field(default=0.9, metadata=meta(check=positive))
    tube_max_drift: float = field(default=0.05, metadata=meta(check=positive))

    def validate(self) -> list[tuple[str, str]]:
        if self.confirm_frames > self.window_frames:
            return [("confirm_frames", _confirm_rule(self.confirm_frames, self.window_frames))]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventOverrides(Section):
    """Per-label overrides of :class:`EventThresholds`; ``None`` keeps the default."""

    confirm_frames: int | None = field(default=None, metadata=meta(check=at_least(1)))
    window_frames: int | None = field(default=None, metadata=meta(check=at_least(1)))
    min_score: float | None = field(default=None, metadata=meta(check=between(0, 1)))
    min_area: float | None = field(default=None, metadata=meta(check=between(0, 1)))
    clear_after_s: float | None = field(default=None, metadata=meta(check=positive))
    update_interval_s: float | None = field(default=None, metadata=meta(check=at_least(0)))
    confirm: Literal["frames", "tube"] | None = None
    tube_min_growth: float | None = field(default=None, metadata=meta(check=positive))
    tube_max_drift: float | None = field(default=None, metadata=meta(check=positive))

    def to_dict(self, masked: bool = True) -> dict[str, Any]:
        return {k: v for k, v in Section.to_dict(self, masked).items() if v is not None}

    def apply(self, base: EventThresholds) -> EventThresholds:
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class SnapshotConfig(Section):
    """Event snapshots under ``<state_dir>/snapshots``; the oldest are deleted first."""

    enabled: bool = True
    keep: int = field(default=200, metadata=meta(check=at_least(1)))
    max_mb: float = field(default=200.0, metadata=meta(check=positive))
    crop: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TrackingConfig(Section):
    """Objects, not labels: the per-camera tracker (see edgedet/tracking.py). ``groups``: labels matched
    as one object (default: every label of the model in one group)."""

    enabled: bool = True
    high: float = field(default=0.5, metadata=meta(check=between(0, 1)))
    low: float = field(default=0.1, metadata=meta(check=between(0, 1)))
    match_iou: float = field(default=0.3, metadata=meta(check=between(0.01, 1)))
    groups: list[list[str]] = field(default_factory=list)

    def validate(self) -> list[tuple[str, str]]:
        if self.low > self.high:
            return [("low", f"must be <= high ({self.high:g}) (got {self.low:g})")]
        return []


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ClipConfig(Section):
    """Event clips: MP4 from ``pre_capture_s`` before an event to ``post_capture_s`` after it, under
    ``<state_dir>/snapshots/<camera>/<event id>.mp4`` (the snapshots' retention applies)."""

    enabled: bool = False
    pre_capture_s: float = field(default=5.0, metadata=meta(check=at_least(0)))
    post_capture_s: float = field(default=5.0, metadata=meta(check=at_least(0)))
    ring_mb: float = field(default=16.0, metadata=meta(check=positive))
    height: int = field(default=480, metadata=meta(check=at_least(16)))


def _build_labels(value: Any, path: PathT, ctx: Ctx) -> Any:
    """``events.labels``: label -> overrides. Labels are model labels, so spaces are allowed."""
    if not isinstance(value, dict):
        raise Mismatch("a mapping", value)
    out: dict[str, Any] = {}
    for name, item in value.items():
        item_path = (*path, name)
        problem = label_key(str(name))
        if problem:
            ctx.add(item_path, problem, ctx.key_line_of(item_path))
            out[name] = INVALID
        else:
            out[name] = element(EventOverrides, item, item_path, ctx)
    return INVALID if any(item is INVALID for item in out.values()) else out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EventsConfig(Section):
    """Confirmed events: per-label thresholds and snapshots (see docs in config/edgedet.example.yaml)."""

    enabled: bool = True
    default: EventThresholds = field(default_factory=EventThresholds)
    labels: dict[str, EventOverrides] = field(default_factory=dict, metadata=meta(build=_build_labels))
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)

    def thresholds(self, label: str) -> EventThresholds:
        """The thresholds for ``label``: its overrides applied to ``default``."""
        overrides = self.labels.get(label)
        return self.default if overrides is None else overrides.apply(self.default)

    def validate(self) -> list[tuple[str | tuple[str, ...], str]]:
        out: list[tuple[str | tuple[str, ...], str]] = []
        for label, overrides in self.labels.items():
            merged = overrides.apply(self.default)
            if merged.confirm_frames > merged.window_frames:
                key = "confirm_frames" if overrides.confirm_frames is not None else "window_frames"
                out.append((("labels", label, key), _confirm_rule(merged.confirm_frames, merged.window_frames)))
        return out


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class OutboxConfig(Section):
    """On-disk outbox of QoS>=1 MQTT messages at ``<state_dir>/outbox.sqlite3`` (see edgedet/outputs/outbox.py).

    ``mode: events_only`` stores events and snapshots but not the per-frame detections.
    """

    enabled: bool = True
    mode: Literal["all", "events_only"] = "all"
    max_messages: int = field(default=100_000, metadata=meta(check=at_least(100)))
    max_age_s: float = field(default=7 * 24 * 3600.0, metadata=meta(check=positive))
    max_mb: float = field(default=200.0, metadata=meta(check=at_least(1)))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery (opt-in; see edgedet/homeassistant.py): retained entity
    configs under ``<prefix>/<component>/...`` and a per-camera stats topic."""

    discovery: bool = False
    prefix: str = field(default="homeassistant", metadata=meta(check=valid_topic_prefix))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WebHistoryConfig(Section):
    """Event history (``<state_dir>/web/history.sqlite3``): the oldest events go first past any limit."""

    max_events: int = field(default=10_000, metadata=meta(check=at_least(10)))
    max_age_days: float = field(default=30.0, metadata=meta(check=positive))
    max_mb: float = field(default=50.0, metadata=meta(check=positive))


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WebFeedbackConfig(Section):
    """Verdicts on events; ``export_dataset`` writes each as a YOLO sample under ``<state_dir>/dataset``."""

    export_dataset: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WebConfig(Section):
    """The web console and REST API on ``metrics.host:metrics.port`` (needs the ``web`` extra; without
    it only ``/metrics`` and ``/healthz`` are served). Off loopback every endpoint but ``/healthz``
    needs ``auth_token`` (bearer, or basic auth as ``username``)."""

    enabled: bool = True
    auth_token: str | None = field(default=None, metadata=meta(secret=True, check=at_least_chars(16)))
    username: str = field(default="edgedet", metadata=meta(check=not_empty))
    metrics_open: bool = False
    stream_fps: float = field(default=2.0, metadata=meta(check=between(0.1, 30)))
    request_timeout_s: float = field(default=10.0, metadata=meta(check=between(1, 300)))
    max_connections: int = field(default=1000, metadata=meta(check=between(16, 100_000)))
    history: WebHistoryConfig = field(default_factory=WebHistoryConfig)
    feedback: WebFeedbackConfig = field(default_factory=WebFeedbackConfig)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Config(Section):
    """The whole daemon configuration (see config/edgedet.example.yaml)."""

    node_id: str = field(default_factory=default_node_id, metadata=meta(check=valid_topic_level))
    log_level: LogLevel = field(default="INFO", metadata=meta(normalise=str.upper))
    state_dir: str = field(default_factory=default_state_dir, metadata=meta(parse=parse_dir))
    cameras: dict[str, CameraConfig] = field(
        metadata=meta(check=lambda v: None if v else "at least one camera is required")
    )
    model: ModelConfig
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    web: WebConfig = field(default_factory=WebConfig)
    # systemd watchdog: pings stop (and systemd restarts edgedet) when no live camera has had a
    # frame processed for this long, or a worker is stuck.
    watchdog_grace_s: float = field(default=120.0, metadata=meta(check=positive))
    location: LocationConfig | None = None  # latitude, longitude, timezone: for profiles' sun rules

    def validate(self) -> list[tuple[str | tuple[str, ...], str]]:
        if self.cameras and not any(cam.enabled for cam in self.cameras.values()):
            return [("cameras", "every camera is disabled; enable at least one")]
        suns = [("cameras", c, "profiles", p, "when", "sun") for c, cam in self.cameras.items()
                for p, prof in cam.profiles.items() if prof.when.sun is not None]
        if suns and self.location is None:
            return [(path, "a sun rule needs the node's location: set location: {latitude: .., longitude: .., "
                            "timezone: ..} at the top level") for path in suns]
        if suns and importlib.util.find_spec("astral") is None:
            return [(path, "a sun rule needs the 'profiles' extra (astral): pip install 'edgedet[profiles]'")
                    for path in suns]
        if (self.web.enabled and self.metrics.enabled and self.web.auth_token is None
                and not is_loopback(self.metrics.host)):
            return [(("web", "auth_token"), f"required when metrics.host ({self.metrics.host}) is not a loopback "
                                           "address (set it from the env file: auth_token: ${EDGEDET_WEB_TOKEN})")]
        return []

    def secrets(self) -> list[str]:
        """Strings to scrub from log lines: the MQTT password and camera URL passwords."""
        found: list[str] = []
        if self.mqtt.password:
            found.append(self.mqtt.password)
        if self.web.auth_token:
            found.append(self.web.auth_token)
        for cam in self.cameras.values():
            if isinstance(cam.url, str):
                for secret in url_secrets(cam.url):
                    found += [secret, unquote(secret)]
        return list(dict.fromkeys(found))


