"""scripts/arm64_tools.py: the parity verdict and the schema check of `make arm64-check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.paths import REPO

TOOL = REPO / "scripts" / "arm64_tools.py"


def detect_file(path: Path, images: dict[str, list[tuple[int, float, list[float]]]]) -> Path:
    lines = ["INFO some log line that is not a record"]
    for image, dets in images.items():
        rec = {"image": image, "detections": [{"class_id": c, "score": s, "box": b} for c, s, b in dets]}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), "compare", str(a), str(b), "--name", "t"],
                          capture_output=True, text=True, timeout=60, check=False)


REF = {"bus.jpg": [(0, 0.66, [216.9, 393.7, 349.3, 889.4]), (0, 0.65, [34.1, 385.0, 218.3, 909.8])],
       "zidane.jpg": [(1, 0.9, [10.0, 10.0, 100.0, 200.0])]}


def test_within_tolerance_passes_and_reports_the_worst(tmp_path: Path) -> None:
    moved = {"bus.jpg": [(0, 0.65, [34.6, 385.0, 218.3, 909.8]), (0, 0.655, [216.9, 393.7, 349.3, 889.4])],
             "zidane.jpg": [(1, 0.9, [10.0, 10.0, 100.0, 200.0])]}
    proc = compare(detect_file(tmp_path / "a.jsonl", REF), detect_file(tmp_path / "b.jsonl", moved))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 images, 3 detections, max box delta 0.50 px, max score delta 0.0050 -> ok" in proc.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zidane.jpg": []}, "zidane.jpg: 1 vs 0 detections"),
        ({"zidane.jpg": [(0, 0.9, [10.0, 10.0, 100.0, 200.0])]}, "zidane.jpg: classes differ"),
        ({"zidane.jpg": [(1, 0.9, [11.5, 10.0, 100.0, 200.0])]}, "box delta 1.50 px > 1.0"),
        ({"zidane.jpg": [(1, 0.88, [10.0, 10.0, 100.0, 200.0])]}, "score delta 0.0200 > 0.01"),
    ],
)
def test_outside_tolerance_fails(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    proc = compare(detect_file(tmp_path / "a.jsonl", REF), detect_file(tmp_path / "b.jsonl", {**REF, **change}))
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and message in proc.stdout, proc.stdout


def test_validate_rejects_a_bad_detections_message(tmp_path: Path) -> None:
    msgs = tmp_path / "m.jsonl"
    msgs.write_text(json.dumps({"topic": "edgedet/n/cam/detections", "retain": False, "payload": "{\"x\": 1}"}) + "\n")
    proc = subprocess.run([sys.executable, str(TOOL), "validate", str(msgs)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: edgedet/n/cam/detections: ")
