"""LiveFrames: the reference store the inference workers publish to, and JPEGs on demand."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edgedet.types import Detection, Detections, Frame
from edgedet.web.live import LiveFrames


def _result(seq: int, camera: str = "gate", value: int = 0) -> tuple[Detections, Frame]:
    image = np.full((360, 640, 3), value, dtype=np.uint8)
    image[100:200, 100:300] = 255 - value
    frame = Frame(camera, seq, 1_000 + seq, 1.0 + seq, image)
    det = Detection("person", 0, 0.9, (100.0, 100.0, 300.0, 200.0))
    return Detections(camera, seq, frame.t_mono_ns, frame.t_wall, 640, 360, "m", (det,)), frame


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_publish_stores_a_reference_not_a_copy() -> None:
    live = LiveFrames()
    dets, frame = _result(1)
    live.publish(dets, frame, 0.05)
    got = live.image("gate")
    assert got is not None and got[0] is dets and got[1] is frame.image
    assert live.latest("gate") is dets and live.latest("other") is None
    assert live.jpeg("other") is None


def test_one_encoding_per_frame_and_variant_for_every_reader() -> None:
    live = LiveFrames()
    live.publish(*_result(1), 0.05)
    results: list[bytes] = []
    lock = threading.Lock()

    def read() -> None:
        jpeg = live.jpeg("gate")
        assert jpeg is not None
        with lock:
            results.append(jpeg.data)

    readers = [threading.Thread(target=read) for _ in range(8)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(10)
    assert len(results) == 8 and len(set(results)) == 1
    assert live.encoded == 1
    live.jpeg("gate", raw=True)
    live.jpeg("gate", height=90)
    assert live.encoded == 3
    live.publish(*_result(2), 0.05)
    assert live.jpeg("gate").seq == 2  # type: ignore[union-attr]
    assert live.encoded == 4


def test_annotated_raw_and_downscaled_variants() -> None:
    live = LiveFrames()
    live.publish(*_result(1, value=0), 0.05)
    annotated = _decode(live.jpeg("gate").data)  # type: ignore[union-attr]
    raw = _decode(live.jpeg("gate", raw=True).data)  # type: ignore[union-attr]
    small = _decode(live.jpeg("gate", height=90).data)  # type: ignore[union-attr]
    assert annotated.shape == raw.shape == (360, 640, 3)
    assert small.shape == (90, 160, 3)
    # the box outline at y=100 is drawn in colour on the annotated frame only
    assert float(np.abs(annotated[100, 150].astype(int) - raw[100, 150].astype(int)).sum()) > 100
    assert live.jpeg("gate", height=1000).data == live.jpeg("gate", height=1000).data  # type: ignore[union-attr]
    assert _decode(live.jpeg("gate", height=1000).data).shape[0] == 360  # type: ignore[union-attr]


@pytest.mark.parametrize("count", [1, 5])
def test_rates_from_published_latencies(count: int) -> None:
    live = LiveFrames()
    for seq in range(count):
        live.publish(*_result(seq), 0.1 * (seq + 1))
    rates = live.rates("gate")
    assert rates["e2e_p50_ms"] == pytest.approx(100.0 * (count // 2 + 1))
    assert rates["e2e_p95_ms"] == pytest.approx(100.0 * count)
    assert live.rates("nobody") == {"fps_processed": 0.0, "e2e_p50_ms": None, "e2e_p95_ms": None}
    live.forget("gate")
    assert live.latest("gate") is None
