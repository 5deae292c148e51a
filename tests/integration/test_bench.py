"""`edgedet bench --quick` end to end: every section measured, machine info, consistent ratios.

The bench runs as a subprocess like a user runs it. No timing thresholds here: the targets live
in the bench output only (this box's speed is not the code's correctness).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.paths import DEMO_MODEL, DEMO_WEIGHTS, REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DEMO_CLIP = REPO / ".cache" / "demo" / "demo.mp4"
QUICK_FRAMES = 16
RATIO_SLACK = 0.0005 + 1e-9  # values are rounded to 3 decimals from the stored a and b


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    for path, how in ((DEMO_MODEL, "make model"), (DEMO_CLIP, "make assets")):
        if not path.is_file():
            pytest.fail(f"{path} missing: run `{how}` first")
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgedet", "bench", "--quick", "--frames", str(QUICK_FRAMES), "--json", str(out)],
        capture_output=True, text=True, timeout=560, cwd=REPO,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def report(bench: tuple[dict[str, Any], str]) -> dict[str, Any]:
    return bench[0]


def test_every_section_present(report: dict[str, Any]):
    for key in ("machine", "config", "raw", "pipeline", "diagnostics", "ultralytics", "live", "ratios", "targets"):
        assert key in report, f"section {key!r} missing from {sorted(report)}"
    assert report["rect"] is None  # no --model-rect given
    assert report["config"]["quick"] is True


def test_machine_info(report: dict[str, Any]):
    m = report["machine"]
    assert m["cpu_model"].strip()
    assert m["cores"] >= 1 and 1 <= m["cores_usable"] <= m["cores"]
    assert m["torch"] and m["opencv"]
    assert m["torch_default_threads"] >= 1


def test_raw_layouts_measured(report: dict[str, Any]):
    raw = report["raw"]
    assert raw["imgsz"] == [640, 640]
    names = [row["name"] for row in raw["layouts"]]
    cores = report["machine"]["cores"]
    assert f"1x{cores} main" in names and f"1x{cores}" in names and f"{cores}x1" in names, names
    for row in raw["layouts"]:
        assert row["img_s"] > 0 and row["ms_img"] > 0 and row["call_ms"] > 0, row
        assert row["threads_observed"] == [row["threads"]], row  # the thread count took effect
        assert len(row["runs_img_s"]) == report["config"]["repeats"] == 1
    best = max(raw["layouts"], key=lambda row: row["img_s"])
    assert raw["best"]["name"] == best["name"] and raw["best"]["img_s"] == best["img_s"]


def test_pipeline_measured(report: dict[str, Any]):
    p = report["pipeline"]
    assert p["frames"] == QUICK_FRAMES
    assert p["fps"] > 0 and p["ms_frame"] > 0
    assert p["workers"] >= 1 and p["threads_observed"] == [p["threads"]]
    for stage in ("preprocess", "inference", "postprocess"):
        assert p["stages_ms"][stage] > 0, p["stages_ms"]
    diag = report["diagnostics"]
    for key in ("video_grab", "video_retrieve", "preprocess", "input_to_channels_last", "postprocess"):
        assert diag[key] > 0, diag


def test_ultralytics_rows(report: dict[str, Any]):
    u = report["ultralytics"]
    if not u["available"]:
        assert u["note"], "a skipped Ultralytics section must say why"
        pytest.skip(u["note"])
    formats = {row["format"] for row in u["rows"]}
    assert "torchscript" in formats
    for row in u["rows"]:
        assert "error" not in row, row
        assert row["fps"] > 0 and row["inference_ms"] > 0, row
        assert row["frames"] == QUICK_FRAMES
        if row["threads_requested"]:
            assert row["threads_observed"] == [row["threads_requested"]], row  # forcing threads worked
    ts = next(row for row in u["rows"] if row["format"] == "torchscript")
    assert ts["input_shape"] == [1, 3, 640, 640]
    if DEMO_WEIGHTS.is_file():
        pt = next(row for row in u["rows"] if row["format"] == "pt")
        assert pt["input_shape"] == [1, 3, 384, 640]  # rect letterbox of the 1280x720 clip
        assert u["best_pt"]["fps"] == max(r["fps"] for r in u["rows"] if r["format"] == "pt")


def test_live_latency(report: dict[str, Any]):
    live = report["live"]
    assert live["source"] in ("rtsp", "file")
    assert live["captured"] > 0 and 0 < live["processed"] <= live["captured"]
    assert 0 <= live["dropped"] <= live["captured"]
    assert live["drop_rate"] == pytest.approx(live["dropped"] / live["captured"], abs=1e-4)
    e2e = live["e2e_ms"]
    assert 0 < e2e["p50"] <= e2e["p95"] <= e2e["p99"]
    assert 0 < live["frame_age_ms"]["p50"] <= live["frame_age_ms"]["max"]
    for stage in ("queue_wait", "preprocess", "inference", "postprocess"):
        assert live["stages_ms"][stage] > 0, live["stages_ms"]


def test_ratios_consistent(report: dict[str, Any]):
    ratios = report["ratios"]
    expected_a_b = {
        "pipeline_vs_raw": (report["pipeline"]["fps"], report["raw"]["best"]["img_s"]),
        "pipeline_vs_ultralytics_torchscript": (
            report["pipeline"]["fps"], (report["ultralytics"]["best_torchscript"] or {}).get("fps")),
        "pipeline_vs_ultralytics_pt": (report["pipeline"]["fps"], (report["ultralytics"]["best_pt"] or {}).get("fps")),
    }
    assert set(ratios) == set(expected_a_b)
    for name, (a, b) in expected_a_b.items():
        r = ratios[name]
        assert (r["a"], r["b"]) == (a, b), (name, r)
        if b is None:
            assert r["value"] is None
            continue
        assert a > 0 and b > 0
        assert abs(r["value"] - a / b) <= RATIO_SLACK, (name, r)
    assert ratios["pipeline_vs_raw"]["value"] is not None
    if report["ultralytics"]["available"]:
        assert ratios["pipeline_vs_ultralytics_torchscript"]["value"] is not None


def test_targets_follow_their_values(report: dict[str, Any]):
    targets = {t["name"]: t for t in report["targets"]}
    assert len(targets) == 4
    for t in targets.values():
        if t["value"] is None or t["limit"] is None:
            assert t["ok"] is None
        elif "<=" in t["name"]:
            assert t["ok"] == (t["value"] <= t["limit"])
        else:
            assert t["ok"] == (t["value"] >= t["limit"])
    live = next(t for name, t in targets.items() if name.startswith("live p50"))
    assert live["value"] == report["live"]["e2e_ms"]["p50"]
    assert live["limit"] == pytest.approx(report["live"]["stages_ms"]["inference"] + 15.0, abs=0.01)


def test_table_printed(bench: tuple[dict[str, Any], str]):
    report, stdout = bench
    assert report["machine"]["cpu_model"] in stdout
    for heading in ("1. raw forward", "2. edgedet pipeline", "3. Ultralytics", "4. live", "5. ratios and targets"):
        assert heading in stdout, f"{heading!r} missing from:\n{stdout}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--video", "/nonexistent/clip.mp4"], "video /nonexistent/clip.mp4: no such file"),
        (["--model", "/nonexistent/m.torchscript"], "model /nonexistent/m.torchscript: no such file"),
        (["--frames", "0"], "--frames must be > 0"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str):
    proc = subprocess.run(
        [sys.executable, "-m", "edgedet", "bench", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2, proc.stderr
    assert f"error: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
