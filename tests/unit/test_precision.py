"""Reduced-precision export pieces without a model: the accuracy guard's matching and figures, the
frame sampling for calibration / held-out sets, the format x precision rules, and the precision a
model's metadata declares."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.boxes import iou_matrix
from edgedet.errors import InputError
from edgedet.model.base import ModelInfo, cpu_bf16
from edgedet.model.export.calibration import even_indices, gather, read_frames, split_held_out
from edgedet.model.export.guard import AccuracyGuardError, agreement, check, match
from edgedet.model.export.precision import check_combination, head_patterns
from edgedet.types import Detection


def det(cls: int, x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Detection:
    return Detection(label=str(cls), class_id=cls, score=score, xyxy=(x1, y1, x2, y2))


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0])


@pytest.mark.parametrize(
    ("ref", "got", "pairs"),
    [
        ([det(0, 0, 0, 10, 10)], [det(0, 1, 0, 11, 10)], [(0, 0)]),  # IoU 0.82
        ([det(0, 0, 0, 10, 10)], [det(1, 0, 0, 10, 10)], []),  # same box, other class
        ([det(0, 0, 0, 10, 10)], [det(0, 6, 0, 16, 10)], []),  # IoU 0.25 < 0.5
        # one-to-one, best IoU first: the exact box takes the reference, the shifted one is extra
        ([det(0, 0, 0, 10, 10)], [det(0, 2, 0, 12, 10), det(0, 0, 0, 10, 10)], [(0, 1)]),
        ([], [det(0, 0, 0, 10, 10)], []),
    ],
)
def test_match(ref, got, pairs):
    assert match(ref, got) == pairs


def test_agreement_figures():
    refs = [[det(0, 0, 0, 10, 10, 0.9), det(1, 50, 50, 80, 80, 0.8)], [det(0, 0, 0, 20, 20, 0.7)]]
    gots = [[det(0, 1, 0, 10, 10, 0.85)], [det(0, 0, 0, 20, 22, 0.75), det(1, 100, 100, 120, 120, 0.3)]]
    a = agreement(refs, gots)
    assert (a.frames, a.reference, a.candidate, a.matched) == (2, 3, 3, 2)
    assert a.precision == pytest.approx(2 / 3) and a.recall == pytest.approx(2 / 3)
    assert a.f1 == pytest.approx(2 / 3)
    assert a.worst_box_px == pytest.approx(2.0) and a.worst_score == pytest.approx(0.05)
    assert "F1 0.667" in a.line() and "2 of 3 fp32 detections" in a.line()


def test_agreement_nothing_found_by_either_is_perfect():
    a = agreement([[], []], [[], []])
    assert (a.precision, a.recall, a.f1) == (1.0, 1.0, 1.0)


def test_guard_check_fails_passes_and_forces():
    bad = agreement([[det(0, 0, 0, 10, 10)]], [[det(0, 30, 30, 40, 40)]])
    with pytest.raises(AccuracyGuardError, match=r"F1 0\.000.*--min-f1 0\.95.*--force") as info:
        check(bad, 0.95, False, "int8 openvino model")
    assert info.value.exit_code == 2
    assert "written anyway" in check(bad, 0.95, True, "int8 openvino model")
    good = agreement([[det(0, 0, 0, 10, 10)]], [[det(0, 0, 0, 10, 10)]])
    assert check(good, 0.95, False, "x") is None
    assert "found nothing" in check(agreement([[]], [[]]), 0.95, False, "x")


@pytest.mark.parametrize(
    ("total", "count", "want"),
    [(10, 3, [0, 4, 9]), (3, 5, [0, 1, 2]), (0, 3, []), (5, 1, [0])],
)
def test_even_indices(total, count, want):
    assert even_indices(total, count) == want


def test_split_held_out_is_disjoint_and_spread():
    cal, val = split_held_out(100, 20)
    assert len(val) == 20 and len(cal) == 80 and not set(cal) & set(val)
    assert val[0] == 0 and val[-1] == 99


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(30):
        frame = np.full((48, 64, 3), i * 8, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return path


def test_read_frames_from_video_sampled_evenly(clip):
    frames = read_frames(str(clip), 4)
    assert frames.kind == "video" and len(frames) == 4
    levels = [int(im.mean()) for im in frames.images]
    assert levels == sorted(levels) and levels[0] < 8 and levels[-1] > 200  # first and last frame included


def test_read_frames_from_folder(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i * 40, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = read_frames(str(tmp_path), 3)
    assert frames.kind == "images" and [int(im.mean()) for im in frames.images] == [0, 80, 160]


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing.mp4", r"--calib: .*missing\.mp4: no such file"), ("empty", r"--calib: .*empty: no images")],
)
def test_read_frames_errors(tmp_path, source, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=message):
        read_frames(str(tmp_path / source), 3)


def test_gather_holds_out_frames_of_calib(clip):
    frames = gather((32, 32), str(clip), None, calib_frames=8, val_frames=4)
    assert len(frames.calib.tensors) + len(frames.val.tensors) == 12 and len(frames.val.tensors) == 4
    assert frames.val.tensors[0].shape == (1, 3, 32, 32) and frames.val.tensors[0].dtype == np.float32
    # letterboxed by the daemon's preprocessing: 64x48 -> 32x24 inside 32x32, padding 114/255
    assert frames.val.geometry[0].new_h == 24
    assert frames.val.tensors[0][0, 0, 0, 0] == pytest.approx(114 / 255)
    assert frames.describe()["val_source"] == str(clip)


@pytest.mark.parametrize(
    ("fmt", "precision", "device", "message"),
    [
        ("onnx", "bf16", "cpu", r"--precision bf16: not available for --format onnx"),
        ("torchscript", "int8", "cpu", r"--precision int8: not available for --format torchscript"),
        ("openvino", "fp16", "cpu", r"fp16 is for TorchScript on CUDA"),
        ("openvino", "int8", "cuda", r"--device must be cpu"),
        ("onnx", "fp8", "cpu", r"expected one of"),
    ],
)
def test_check_combination_rejects(fmt, precision, device, message):
    with pytest.raises(InputError, match=message):
        check_combination(fmt, precision, device)


def test_check_combination_accepts():
    for fmt, precision in [("torchscript", "bf16"), ("openvino", "int8"), ("onnx", "int8"), ("openvino", "bf16")]:
        check_combination(fmt, precision, "cpu")


def test_head_patterns_keep_box_decoding_in_float():
    names = ["/inner/model.0/conv/Conv", "/inner/model.22/cv2.0/cv2.0.0/conv/Conv", "/inner/model.22/dfl/conv/Conv",
             "/inner/model.22/Sub_1", "/inner/model.22/Sigmoid", "/inner/model.21/m.0/Add"]
    import re

    def kept(level: str) -> list[str]:
        return [n for n in names if any(re.fullmatch(p, n) for p in head_patterns(names, level))]

    assert kept("head-decode") == ["/inner/model.22/dfl/conv/Conv", "/inner/model.22/Sub_1", "/inner/model.22/Sigmoid"]
    assert kept("head") == [n for n in names if "model.22/" in n]


@pytest.mark.parametrize(
    ("extra", "half", "want"),
    [({}, False, "fp32"), ({}, True, "fp16"), ({"edgedet": {"precision": "bf16"}}, False, "bf16"),
     ({"args": {"int8": True}}, False, "int8"), ({"edgedet": {"precision": "weird"}}, False, "fp32")],
)
def test_model_info_precision(extra, half, want):
    info = ModelInfo("m", ("a",), (32, 32), 32, "detect", 1, half, None, extra)
    assert info.precision == want


def test_cpu_bf16_matches_cpuinfo():
    native, text = cpu_bf16()
    flags = Path("/proc/cpuinfo").read_text()
    assert native == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert "bf16" in text
