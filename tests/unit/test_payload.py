"""to_payload(), the detections JSON Schema, Topics and the publisher's config checks (no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.config import MqttConfig, TlsConfig
from edgedet.errors import ConfigError
from edgedet.metrics import Metrics
from edgedet.outputs.client import MqttPublisher
from edgedet.outputs.payload import fit_jpeg, to_payload
from edgedet.outputs.topics import Topics
from edgedet.schemas import load_schema
from edgedet.types import Detection, Detections

T_WALL = 1_700_000_000.1234  # 2023-11-14T22:13:20.123Z


def mqtt_cfg(**fields: Any) -> MqttConfig:
    """The real config section, built directly (no file checks), for a broker nobody listens on."""
    return MqttConfig(port=1, **fields)


def publisher(cfg: MqttConfig, cameras: list[str]) -> MqttPublisher:
    return MqttPublisher(cfg, "pi", cameras, Metrics(CollectorRegistry()))


def make_dets(items: tuple[Detection, ...] | None = None, **over: Any) -> Detections:
    if items is None:
        items = (Detection("person", 0, 0.87654, (10.04, 20.06, 30.0, 40.94)),)
    fields: dict[str, Any] = {
        "camera": "gate",
        "seq": 42,
        "t_mono_ns": 123,
        "t_wall": T_WALL,
        "width": 1920,
        "height": 1080,
        "model": "yolov8n",
        "items": items,
        "timings": {"queue_wait": 0.002, "preprocess": 0.0012345, "inference": 0.0156789,
                    "postprocess": 0.0005},
    }
    fields.update(over)
    return Detections(**fields)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema("detections")
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def decode(payload: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(payload)
    return obj


# --------------------------------------------------------------------------- payload


def test_payload_exact_values(validator: jsonschema.Draft202012Validator) -> None:
    payload = to_payload(make_dets(), capture_to_publish_ms=12.3456)
    assert b": " not in payload and b", " not in payload  # compact separators
    msg = decode(payload)
    validator.validate(msg)
    assert msg == {
        "camera": "gate",
        "seq": 42,
        "timestamp": "2023-11-14T22:13:20.123Z",
        "ts": T_WALL,
        "width": 1920,
        "height": 1080,
        "model": "yolov8n",
        "detections": [{"label": "person", "class_id": 0, "score": 0.8765, "box": [10.0, 20.1, 30.0, 40.9],
                        "track_id": None}],  # issue 14: null until the tracker matched it
        "latency_ms": {"capture_to_publish": 12.35, "preprocess": 1.23, "inference": 15.68,
                       "postprocess": 0.5, "queue_wait": 2.0},
    }


def test_payload_is_pure() -> None:
    dets = make_dets()
    assert to_payload(dets, 1.0) == to_payload(dets, 1.0)


def test_empty_detections_are_valid(validator: jsonschema.Draft202012Validator) -> None:
    msg = decode(to_payload(make_dets(items=()), 3.0))
    validator.validate(msg)
    assert msg["detections"] == []


@pytest.mark.parametrize(
    ("t_wall", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (0.9999, "1970-01-01T00:00:00.999Z"),  # truncated, never rounded into the next second
        (1_704_067_199.5, "2023-12-31T23:59:59.500Z"),
    ],
)
def test_timestamp_is_utc_with_milliseconds(t_wall: float, expected: str) -> None:
    assert decode(to_payload(make_dets(t_wall=t_wall), 0.0))["timestamp"] == expected


def test_missing_or_non_finite_timings_are_null(validator: jsonschema.Draft202012Validator) -> None:
    dets = make_dets(timings={"inference": 0.01, "preprocess": math.nan})
    msg = decode(to_payload(dets, math.inf))
    validator.validate(msg)
    assert msg["latency_ms"] == {"capture_to_publish": None, "preprocess": None, "inference": 10.0,
                                 "postprocess": None, "queue_wait": None}


def test_numpy_like_class_id_is_plain_int() -> None:
    np = pytest.importorskip("numpy")
    det = Detection("car", np.int64(2), np.float32(0.5), (1.0, 2.0, 3.0, 4.0))
    assert decode(to_payload(make_dets(items=(det,)), 0.0))["detections"][0]["class_id"] == 2


def test_nan_score_is_rejected() -> None:
    det = Detection("car", 2, math.nan, (1.0, 2.0, 3.0, 4.0))
    with pytest.raises(ValueError):
        to_payload(make_dets(items=(det,)), 0.0)


# --------------------------------------------------------------------------- schema


def _valid_message() -> dict[str, Any]:
    return decode(to_payload(make_dets(), 1.0))


def _drop(key: str) -> Any:
    def edit(m: dict[str, Any]) -> None:
        del m[key]
    return edit


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_drop("camera"), id="missing-camera"),
        pytest.param(_drop("timestamp"), id="missing-timestamp"),
        pytest.param(_drop("latency_ms"), id="missing-latency"),
        pytest.param(lambda m: m.update(extra=1), id="extra-top-level-field"),
        pytest.param(lambda m: m["detections"][0].update(track_id=7), id="extra-detection-field"),
        pytest.param(lambda m: m["detections"][0].update(box=[1, 2, 3]), id="box-of-3"),
        pytest.param(lambda m: m["detections"][0].update(box=[1, 2, 3, 4, 5]), id="box-of-5"),
        pytest.param(lambda m: m["detections"][0].update(score=1.5), id="score-above-1"),
        pytest.param(lambda m: m["detections"][0].pop("label"), id="detection-without-label"),
        pytest.param(lambda m: m.update(seq=-1), id="negative-seq"),
        pytest.param(lambda m: m.update(timestamp="2023-11-14 22:13:20"), id="bad-timestamp"),
        pytest.param(lambda m: m["latency_ms"].pop("inference"), id="missing-latency-stage"),
    ],
)
def test_schema_rejects(edit: Any, validator: jsonschema.Draft202012Validator) -> None:
    msg = _valid_message()
    validator.validate(msg)
    edit(msg)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(msg)


def test_load_schema_returns_a_fresh_dict() -> None:
    first = load_schema("detections")
    first["required"].clear()
    assert "camera" in load_schema("detections")["required"]


# --------------------------------------------------------------------------- topics


def test_topics() -> None:
    t = Topics("site/edgedet", "pi4")
    assert t.node_status() == "site/edgedet/pi4/status"
    assert t.camera_status("gate") == "site/edgedet/pi4/gate/status"
    assert t.detections("gate") == "site/edgedet/pi4/gate/detections"


@pytest.mark.parametrize(
    ("prefix", "node", "camera", "message"),
    [
        ("", "pi", "gate", "prefix must not be empty"),
        ("a/", "pi", "gate", "empty level"),
        ("a/+", "pi", "gate", r"prefix 'a/\+' cannot be used in an MQTT topic \(contains '\+'\)"),
        ("edgedet", "p/i", "gate", "node id 'p/i'"),
        ("edgedet", "", "gate", "node id must not be empty"),
        ("edgedet", "pi", "ga#te", "camera name 'ga#te'"),
    ],
)
def test_topics_reject_bad_names(prefix: str, node: str, camera: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Topics(prefix, node).detections(camera)


# --------------------------------------------------------------------------- publisher config


def test_bad_camera_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="camera name 'a/b'"):
        publisher(mqtt_cfg(), ["a/b"])


def test_bad_qos_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mqtt.qos"):
        publisher(mqtt_cfg(qos=3), [])


def test_unreadable_tls_ca_names_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError) as err:
        publisher(mqtt_cfg(tls=TlsConfig(ca=str(missing))), [])
    assert str(err.value) == f"mqtt.tls.ca: cannot read {missing}: No such file or directory"


def test_garbage_tls_ca_names_the_field(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.ca: .* is not a usable PEM CA bundle"):
        publisher(mqtt_cfg(tls=TlsConfig(ca=str(ca))), [])


def test_garbage_client_cert_names_the_field(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("junk\n")
    with pytest.raises(ConfigError, match=r"^mqtt\.tls\.cert: cannot load client certificate"):
        publisher(mqtt_cfg(tls=TlsConfig(cert=str(cert))), [])


def test_tls_key_without_cert(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mqtt.tls.key: set without mqtt.tls.cert"):
        publisher(mqtt_cfg(tls=TlsConfig(key=str(tmp_path / "k.pem"))), [])


def test_stop_without_start_is_harmless() -> None:
    pub = publisher(mqtt_cfg(), ["gate"])
    pub.stop()
    pub.stop()
    assert not pub.connected


# --------------------------------------------------------------------------- fit_jpeg (mqtt.max_payload_bytes)


@pytest.mark.parametrize("limit", [200_000, 30_000, 5_000])
def test_fit_jpeg_reencodes_a_snapshot_under_the_limit(limit: int) -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    out = fit_jpeg(jpeg, limit)
    assert out is not None and len(out) <= limit
    image = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] / image.shape[0] == pytest.approx(1280 / 720, rel=0.02)


def test_fit_jpeg_gives_up_on_what_cannot_fit_or_decode() -> None:
    assert fit_jpeg(b"not a jpeg", 10_000) is None
    noisy = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert fit_jpeg(cv2.imencode(".jpg", noisy)[1].tobytes(), 500) is None  # 160 px of noise is > 500 B
