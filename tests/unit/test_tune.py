"""``edgedet tune`` pieces: the layouts it tries and the config edit that keeps comments."""

from __future__ import annotations

from pathlib import Path

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


# --------------------------------------------------------------------------- rect candidates


def _video(path, size):
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, size)
    for _ in range(3):
        writer.write(np.zeros((size[1], size[0], 3), np.uint8))
    writer.release()
    return path


def _ov_model(directory, precision, imgsz, sha="c0ffee", **ours):
    """A model folder whose metadata tune reads (no runtime loads it here)."""
    directory.mkdir(parents=True)
    (directory / "m.xml").write_text('<?xml version="1.0"?>\n<net name="m"/>\n')
    (directory / "m.bin").write_bytes(b"")
    meta = {"stride": 32, "task": "detect", "batch": 1, "imgsz": list(imgsz), "names": {0: "person", 1: "fall"},
            "edgedet": {"precision": precision, "source": "best.pt", "source_sha256": sha, **ours}}
    (directory / "metadata.yaml").write_text(yaml.safe_dump(meta))
    return directory


def _config(tmp_path, cameras, model):
    from edgedet.config import parse_config

    text = yaml.safe_dump({"cameras": cameras, "model": {"path": str(model)},
                           "mqtt": {"host": "localhost"}})
    return parse_config(text, "c.yaml", tmp_path)


@pytest.mark.parametrize(("cameras", "want"), [
    ({"a": "clip"}, [(320, 180, ("a",))]),
    ({"a": "clip", "b": "rtsp://cam/s"}, [(320, 180, ("a", "b"))]),
    ({"a": "clip", "usb": {"url": 0, "width": 640, "height": 480}}, [(320, 180, ("a",)), (640, 480, ("usb",))]),
    ({"usb": {"url": 0}}, [(320, 180, ("usb",))]),  # no size in the config: the clip's
])
def test_camera_aspects(tmp_path, cameras, want):
    from edgedet.tune.rect import camera_aspects

    clip = _video(tmp_path / "clip.avi", (320, 180))
    cams = {k: {"url": str(clip)} if v == "clip" else ({"url": v} if isinstance(v, str) else v)
            for k, v in cameras.items()}
    cfg = _config(tmp_path, cams, _ov_model(tmp_path / "m_openvino_model", "fp32", (64, 64)))
    got = [(a.width, a.height, a.cameras) for a in camera_aspects(cfg.cameras, str(clip))]
    assert got == want


@pytest.mark.parametrize(("imgsz", "sizes", "ok"), [
    ((640, 640), [(1280, 720), (640, 480)], True),  # square suits every camera
    ((384, 640), [(1280, 720), (1920, 1080)], True),
    ((384, 640), [(1280, 720), (640, 480)], False),  # 4:3 camera
    ((640, 384), [(720, 1280)], True),  # portrait
    ((96, 160), [(1280, 720)], True),
])
def test_fits(imgsz, sizes, ok):
    from edgedet.tune.rect import Aspect, fits

    why = fits(imgsz, 32, [Aspect(w, h, (f"cam{i}",)) for i, (w, h) in enumerate(sizes)])
    assert (why is None) == ok, why


def test_missing_rect_variants_and_their_export_commands(tmp_path, capsys):
    """Each square (format, precision) gets one aspect-matched twin per camera aspect, named after it,
    unless one is already there; without --weights tune prints the exact export commands."""
    import argparse

    from edgedet.tune import add_rect_candidates, candidates, judge

    clip = _video(tmp_path / "clip.avi", (320, 180))
    models = tmp_path / "models"
    base = _ov_model(models / "m_openvino_model", "fp32", (160, 160))
    _ov_model(models / "m-int8_openvino_model", "int8", (160, 160), calib_frames=24, val_frames=12,
              agreement={"f1": 0.97})
    _ov_model(models / "m-bf16_openvino_model", "bf16", (160, 160), agreement={"f1": 0.99})
    _ov_model(models / "m-bf16-96x160_openvino_model", "bf16", (96, 160), agreement={"f1": 0.99})  # there already
    _ov_model(models / "other_openvino_model", "fp32", (160, 160), sha="another")  # another checkpoint
    cfg = _config(tmp_path, {"a": {"url": str(clip)}}, base)
    cands = [judge(p, 0.95, False) for p in candidates(str(base), [])]
    assert sorted(Path(c.path).name for c in cands) == [
        "m-bf16-96x160_openvino_model", "m-bf16_openvino_model", "m-int8_openvino_model", "m_openvino_model"]
    args = argparse.Namespace(weights=None, min_f1=0.9, allow_unchecked=False)
    assert add_rect_candidates(args, cfg, str(clip), cands, models) == []
    out = capsys.readouterr().out
    assert "no aspect-matched model for 16:9 frames" in out
    lines = sorted(line.strip() for line in out.splitlines() if line.startswith("  edgedet export"))
    assert lines == [
        f"edgedet export --weights best.pt --format openvino --imgsz 160 --rect 16:9 --precision int8 "
        f"--calib {clip} --calib-frames 24 --val-frames 12 --min-f1 0.9 -o {models}/m-int8-96x160_openvino_model",
        f"edgedet export --weights best.pt --format openvino --imgsz 160 --rect 16:9 -o "
        f"{models}/m-96x160_openvino_model",
    ]
    # a 4:3 camera too: the 16:9 twin is listed but never recommended
    cfg = _config(tmp_path, {"a": {"url": str(clip)}, "usb": {"url": 0, "width": 640, "height": 480}}, base)
    add_rect_candidates(args, cfg, str(clip), cands, models)
    rect = next(c for c in cands if c.imgsz == (96, 160))
    assert not rect.accepted and "camera usb has 640x480 frames (4:3)" in rect.why
    assert "--rect 4:3" in capsys.readouterr().out and all(c.accepted for c in cands if c.imgsz == (160, 160))


def test_rect_export_refuses_another_checkpoint(tmp_path):
    import argparse

    from edgedet.tune import add_rect_candidates, judge

    clip = _video(tmp_path / "clip.avi", (320, 180))
    base = _ov_model(tmp_path / "m_openvino_model", "fp32", (160, 160))
    weights = tmp_path / "other.pt"
    weights.write_bytes(b"not the checkpoint")
    cfg = _config(tmp_path, {"a": {"url": str(clip)}}, base)
    args = argparse.Namespace(weights=str(weights), min_f1=0.95, allow_unchecked=False)
    with pytest.raises(InputError, match="not the checkpoint .* was exported from"):
        add_rect_candidates(args, cfg, str(clip), [judge(str(base), 0.95, False)], tmp_path)
