"""Configuration: frozen dataclasses, YAML loading with line numbers, secret masking.

``load_config(path)`` returns a :class:`Config` or raises :class:`~edgedet.errors.ConfigError`
listing every problem at once, one line each::

    config.yaml:12: cameras.gate.url: expected rtsp://, http(s)://, a file, ... (got 'rstp://cam/1')

String values may use ``${VAR}``, ``${VAR:-default}`` (used when VAR is unset or empty) and
``$${`` for a literal ``${``. A value that came from the environment may also fill a number or a
true/false key (``port: ${MQTT_PORT:-1883}``).

Relative file paths (camera files, ``model.path``, TLS files, ``mqtt.password_file``) are looked up
in the config file's directory first, then the working directory, and stored absolute. A relative
``state_dir`` is relative to the working directory.

Secrets (``mqtt.password`` and passwords in camera URLs) never appear in error messages, in
``repr()``, or in ``to_dict()`` / ``dump_config()`` output unless ``masked=False`` is asked for.

The parts, in the order a config passes through them:

- ``loader``: YAML text -> plain values with line numbers and ``${ENV}`` substituted;
  ``load_config`` / ``parse_config`` / ``dump_config``;
- ``builder``: plain values -> section dataclasses, generic over ``dataclasses.fields()``;
- ``sections``: the section dataclasses (``CameraConfig`` ... ``Config``) and their cross-field rules;
- ``fields``: what single values accept (files, URLs, devices, ranges, topic levels) and defaults;
- ``problems``: collecting problems with their YAML line, value rendering, did-you-mean hints.
"""

from edgedet.config.fields import CameraKind, default_client_id
from edgedet.config.loader import dump_config, load_config, parse_config
from edgedet.config.sections import (
    CameraConfig,
    CameraTracking,
    ClipConfig,
    Config,
    EventOverrides,
    EventsConfig,
    EventThresholds,
    HomeAssistantConfig,
    LogLevel,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    OutboxConfig,
    Polygon,
    SnapshotConfig,
    TlsConfig,
    TrackingConfig,
    WorkersConfig,
)

__all__ = [
    "CameraConfig",
    "CameraKind",
    "CameraTracking",
    "ClipConfig",
    "Config",
    "EventOverrides",
    "EventThresholds",
    "EventsConfig",
    "HomeAssistantConfig",
    "LogLevel",
    "MetricsConfig",
    "ModelConfig",
    "MqttConfig",
    "OutboxConfig",
    "Polygon",
    "SnapshotConfig",
    "TlsConfig",
    "TrackingConfig",
    "WorkersConfig",
    "default_client_id",
    "dump_config",
    "load_config",
    "parse_config",
]
