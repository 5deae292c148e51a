"""edgedet detect == Ultralytics predict on the same TorchScript file (ours loads in Ultralytics)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO, ultralytics_assets

pytestmark = pytest.mark.integration
ASSETS = ultralytics_assets()

# Ultralytics runs in its own process: importing it changes torch/OpenMP thread settings.
ULTRALYTICS = """
import json, sys
from ultralytics import YOLO
model = YOLO(sys.argv[1], task="detect")
imgsz = json.loads(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    r = model.predict(path, imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)[0]
    out[path] = [
        {"class_id": int(c), "score": float(s), "box": [float(v) for v in b]}
        for b, s, c in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist(), r.boxes.cls.tolist())
    ]
print(json.dumps(out))
"""


def compare(model, imgsz: list[int]) -> tuple[float, float]:
    """Run Ultralytics and edgedet on the sample images; return (worst box px, worst score) diffs."""
    images = [str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]
    ref = subprocess.run(
        [sys.executable, "-c", ULTRALYTICS, str(model), json.dumps(imgsz), *images],
        capture_output=True, text=True, cwd=REPO,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = json.loads(ref.stdout.strip().splitlines()[-1])
    ours = subprocess.run(
        [sys.executable, "-m", "edgedet", "detect", *images, "--model", str(model), "--conf", "0.25", "--iou", "0.7"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert ours.returncode == 0, ours.stderr
    got = [json.loads(line) for line in ours.stdout.splitlines()]
    worst_box = worst_score = 0.0
    for image, record in zip(images, got, strict=True):
        want = expected[image]
        assert len(record["detections"]) == len(want) > 0, image
        for d, w in zip(record["detections"], want, strict=True):
            assert d["class_id"] == w["class_id"]
            worst_score = max(worst_score, abs(d["score"] - w["score"]))
            worst_box = max(worst_box, *(abs(a - b) for a, b in zip(d["box"], w["box"], strict=True)))
    return worst_box, worst_score


@pytest.mark.skipif(ASSETS is None, reason="ultralytics not installed")
def test_parity_with_ultralytics_on_same_torchscript_file():
    worst_box, worst_score = compare(DEMO_MODEL, [640, 640])
    assert worst_box <= 1.0 and worst_score <= 0.01
    print(f"parity 640x640: max box diff {worst_box:.3f} px, max score diff {worst_score:.5f}")


@pytest.mark.skipif(ASSETS is None, reason="ultralytics not installed")
def test_parity_aspect_matched_model(tmp_path):
    """`--rect 16:9` traces at 384x640; pre/post-processing follow the metadata shape."""
    rect = tmp_path / "rect.torchscript"
    result = subprocess.run(
        [sys.executable, "-m", "edgedet", "export", "--weights", str(DEMO_WEIGHTS), "--rect", "16:9", "-o", str(rect)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "input 1x3x384x640" in result.stdout
    worst_box, worst_score = compare(rect, [384, 640])
    assert worst_box <= 1.0 and worst_score <= 0.01
    print(f"parity 384x640: max box diff {worst_box:.3f} px, max score diff {worst_score:.5f}")
