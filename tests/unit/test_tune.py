"""``edgedet tune`` pieces: the layouts it tries and the config edit that keeps comments."""

from __future__ import annotations

import pytest
import yaml

from edgedet.errors import InputError
from edgedet.tune import format_table, parse_layouts
from edgedet.tune.configedit import set_block

CONFIG = """\
# my edge box
model:
  # the file
  path: /models/a.torchscript   # keep this comment
  conf: 0.35
workers:
  count: null  # automatic
  batch_size: 1

mqtt:
  host: localhost
"""


@pytest.mark.parametrize(("text", "cores", "want"), [
    (None, 2, [(1, 2), (2, 1)]), (None, 4, [(1, 4), (4, 1), (2, 2)]), (None, 1, [(1, 1)]),
    ("1x2,3x1", 2, [(1, 2), (3, 1)]),
])
def test_parse_layouts(text, cores, want):
    assert parse_layouts(text, cores) == want


@pytest.mark.parametrize("text", ["2", "0x1", "ax2"])
def test_parse_layouts_errors(text):
    with pytest.raises(InputError, match="--layouts"):
        parse_layouts(text, 2)


def test_set_block_keeps_comments_and_other_keys():
    out = set_block(CONFIG, "model", {"path": "/models/b_openvino_model", "backend": "openvino"})
    out = set_block(out, "workers", {"count": 1, "threads_per_worker": 2})
    assert "# my edge box" in out and "  # the file" in out
    assert "  path: /models/b_openvino_model   # keep this comment\n" in out
    assert "  count: 1  # automatic\n" in out
    data = yaml.safe_load(out)
    assert data["model"] == {"path": "/models/b_openvino_model", "conf": 0.35, "backend": "openvino"}
    assert data["workers"] == {"count": 1, "batch_size": 1, "threads_per_worker": 2}
    assert data["mqtt"] == {"host": "localhost"}
    # everything outside the two changed values is byte for byte the same
    assert out.replace("/models/b_openvino_model", "/models/a.torchscript").replace("count: 1", "count: null") \
        .replace("  backend: openvino\n", "").replace("  threads_per_worker: 2\n", "") == CONFIG


def test_set_block_adds_a_missing_section_and_rewrites_flow_style():
    out = set_block("model:\n  path: a.torchscript\n", "workers", {"count": 1})
    assert yaml.safe_load(out)["workers"] == {"count": 1}
    out = set_block("model: {path: a.torchscript, conf: 0.3}\n", "model", {"path": "b.onnx"})
    assert yaml.safe_load(out)["model"] == {"path": "b.onnx", "conf": 0.3}


def test_set_block_quotes_odd_paths():
    out = set_block("model:\n  path: a\n", "model", {"path": "/my models/#1.onnx"})
    assert yaml.safe_load(out)["model"]["path"] == "/my models/#1.onnx"


def test_format_table_marks_best_and_rejected():
    base = {"backend": "openvino", "imgsz": [640, 640], "workers": 1, "threads": 2, "forward_ms": 50.0,
            "raw_img_s": 20.0, "pipeline_fps": 19.0}
    good = {**base, "path": "a_openvino_model", "precision": "int8", "f1": 0.97, "accepted": True, "why": "F1 0.970"}
    bad = {**base, "path": "b_openvino_model", "precision": "int8", "f1": 0.90, "accepted": False, "why": "F1 0.900",
           "pipeline_fps": 25.0}
    table = format_table([bad, good], good)
    assert "not recommended (F1 0.900)" in table and "BEST ok (F1 0.970)" in table
