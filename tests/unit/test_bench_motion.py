"""The arithmetic and the table of ``edgedet bench --motion`` (the measurement itself runs in the bench)."""

from __future__ import annotations

from typing import Any

from edgedet.bench.motion import _appearances, capacity, format_motion


def result(motion_inferences: int = 30) -> dict[str, Any]:
    run = {"frames": 300, "skipped": {"no_motion": 250, "min_interval": 20}, "max_gap_s": 10.0}
    return {
        "min_interval_s": 0.5, "max_interval_s": 10.0, "workers": 1, "threads": 2, "pipeline_fps": 10.0,
        "cost": {"size": "1280x720", "gate_ms_p50": 0.5, "gate_ms_p95": 0.7, "decode_ms_p50": 1.5},
        "static_scene": {"fps": 5.0, "ratio": 10.0, "runs": {"always": {**run, "inferences": 300},
                                                            "motion": {**run, "inferences": motion_inferences}},
                         "delays_s": {"always": [0.4, 0.4, 0.4], "motion": [0.4, 0.6, 0.4]},
                         "targets": {"ratio_ge_5": True}},
        "slow_plume": {"fps": 2.0, "ratio": 1.3, "runs": {"always": {**run, "inferences": 120},
                                                          "motion": {**run, "inferences": 90}},
                       "gate": {"raised": True, "reason": "slow_change", "frames_after_start": 18,
                                "seconds_after_start": 9.0}, "first_inference_after_start_s": 5.0},
    }


def test_capacity_per_mode() -> None:
    cap = capacity(result(), cores=2)
    rows = {r["interval_s"]: r for r in cap["rows"]}
    assert rows[0.2]["always"] == 2 and rows[1.0]["always"] == 10  # 10 inferences/s over 5/s and 1/s
    # motion: a tenth of the frames inferred, plus 2 ms of decode + measure per frame over 2 cores
    assert rows[0.2]["motion"] == int(1 / (0.1 * 5 / 10 + 5 * 0.002 / 2))
    assert rows[10.0]["motion"] <= rows[10.0]["always"]  # never below the floor's one per max_interval_s
    assert cap["motion_duty"] == 0.1


def test_delay_per_appearance_and_the_table() -> None:
    run = {"new_events_s": [8.4, 26.6, 61.0]}
    assert _appearances(run, [(8.0, 12.0), (26.0, 30.0), (46.0, 50.0)], 10.0) == [0.4, 0.6, None]
    r = result()
    r["capacity"] = capacity(r, cores=2)
    text = format_motion(r)
    assert "static_scene: 300 frames at 5 fps; inferences always 300, motion 30 (10x fewer" in text
    assert "raises the rate 18 frames (9 s) after the plume starts (slow_change)" in text
    assert "one frame every 0.2 s: always 2, motion " in text
