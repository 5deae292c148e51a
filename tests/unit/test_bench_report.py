"""The bench's comparison of edgedet's fastest accepted setup with Ultralytics' int8 exports: which
rows each ratio compares (same input size, square and rect, and the overall fastest)."""

from __future__ import annotations

from edgedet.bench.report import _same_size_ratios
from edgedet.bench.variants import format_variants


def _variant(name, imgsz, fps, f1, raw=None):
    return {"name": name, "backend": "openvino", "precision": "int8", "imgsz": imgsz, "forward_ms": 10.0,
            "raw_img_s": raw or fps, "pipeline_fps": fps, "pipeline_vs_raw": round(fps / (raw or fps), 3),
            "runs_fps": [fps], "f1": f1}


def _ultra(name, hw, fps):
    return {"name": name, "format": "openvino", "input_shape": [1, 3, *hw], "fps": fps}


REPORT = {
    "variants": [
        _variant("sq-bf16 1x2", [640, 640], 30.0, 0.986),
        _variant("sq-int8-bad 1x2", [640, 640], 40.0, 0.90),  # fastest square, but below the F1 line
        _variant("rect-bf16 1x2", [384, 640], 48.0, 0.985, raw=50.0),
        _variant("rect-int8 1x2", [384, 640], 45.0, 0.97),
    ],
    "ultralytics": {"rows": [
        _ultra("openvino int8 default threads", (640, 640), 40.0),
        _ultra("openvino int8 2 threads", (640, 640), 38.0),
        _ultra("openvino int8 384x640 2 threads", (384, 640), 60.0),
        {"name": "pt 2 threads", "format": "pt", "input_shape": [1, 3, 384, 640], "fps": 13.0},
    ]},
}


def test_same_size_ratios_compare_like_with_like():
    ratios = _same_size_ratios(REPORT)
    assert set(ratios) == {"square_640x640_vs_ultralytics_int8_640x640", "rect_384x640_vs_ultralytics_int8_384x640",
                           "fastest_vs_ultralytics_int8_640x640"}
    sq = ratios["square_640x640_vs_ultralytics_int8_640x640"]
    assert (sq["a"], sq["b"], sq["value"]) == (30.0, 40.0, 0.75)  # the accepted bf16, not the rejected int8
    assert "sq-bf16 1x2" in sq["what"] and "openvino int8 default threads" in sq["what"]
    rect = ratios["rect_384x640_vs_ultralytics_int8_384x640"]
    assert (rect["a"], rect["b"], rect["value"]) == (48.0, 60.0, 0.8)
    overall = ratios["fastest_vs_ultralytics_int8_640x640"]
    assert (overall["a"], overall["b"], overall["value"]) == (48.0, 40.0, 1.2)


def test_variant_table_shows_input_and_pipeline_over_raw():
    lines = format_variants(REPORT["variants"])
    assert "pipe/raw" in lines[0] and "input" in lines[0]
    rect = next(line for line in lines if line.lstrip().startswith("rect-bf16"))
    assert "384x640" in rect and "0.960" in rect
