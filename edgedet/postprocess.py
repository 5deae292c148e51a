"""Decode a YOLOv8 head output into detections in source-image pixels (numpy + OpenCV).

Input layout: ``(1, 4 + nc, anchors)``; rows 0-3 are cx, cy, w, h in model-input pixels, rows
4.. are per-class scores (no objectness row). Candidates with a non-finite box or score (NaN, inf:
an fp16 overflow, a broken export) are dropped before NMS, so no record carries one. Semantics follow Ultralytics'
``non_max_suppression`` (best class per box, ``score > conf``, class-aware NMS, at most
``max_nms`` candidates by score, at most ``max_det`` kept) and ``scale_boxes`` (remove padding,
divide by the per-axis gain, clip to the image).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edgedet.preprocess import Letterbox
from edgedet.types import Detection

MAX_NMS = 30000


def class_ids(requested: Sequence[str | int], names: Sequence[str]) -> list[int]:
    """Labels or class ids -> class ids of a model with ``names``; ValueError names the bad one.
    Digit strings count as ids (command-line input)."""
    ids: list[int] = []
    for item in requested:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise ValueError(f"class id {item} out of range (model has {len(names)} classes)")
            ids.append(item)
        elif item in names:
            ids.append(list(names).index(item))
        else:
            raise ValueError(f"unknown label {item!r} (model labels: {', '.join(names)})")
    return ids


def decode(
    output: np.ndarray,
    geometry: Letterbox,
    names: Sequence[str],
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    classes: Sequence[int] | None = None,
    max_det: int = 300,
) -> tuple[Detection, ...]:
    """Turn one image's raw head output into ``Detection`` records, best score first."""
    if output.ndim == 3:
        if output.shape[0] != 1:
            raise ValueError(f"decode expects one image's output (got batch {output.shape[0]})")
        output = output[0]
    nc = output.shape[0] - 4
    if nc != len(names):
        raise ValueError(f"model output has {nc} classes but {len(names)} names")
    scores_all = output[4:]
    class_ids = scores_all.argmax(axis=0)
    scores = np.take_along_axis(scores_all, class_ids[None, :], axis=0)[0]
    keep = scores > conf
    if classes is not None:
        keep &= np.isin(class_ids, np.asarray(classes, dtype=class_ids.dtype))
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return ()
    scores = scores[idx].astype(np.float32)
    class_ids = class_ids[idx]
    cxcywh = output[:4, idx].T.astype(np.float32)
    finite = np.isfinite(scores) & np.isfinite(cxcywh).all(axis=1)  # NaN/inf rows: a broken export or overflow
    if not finite.all():
        scores, class_ids, cxcywh = scores[finite], class_ids[finite], cxcywh[finite]
        if scores.size == 0:
            return ()
    if idx.size > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        scores, class_ids, cxcywh = scores[top], class_ids[top], cxcywh[top]
    half_wh = cxcywh[:, 2:4] / 2
    xyxy = np.concatenate((cxcywh[:, :2] - half_wh, cxcywh[:, :2] + half_wh), axis=1)
    # NMSBoxesBatched takes (x, y, w, h) boxes and offsets them per class itself.
    xywh = np.concatenate((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), axis=1)
    nms = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(), 0.0, float(iou))
    kept = np.asarray(nms, dtype=np.int64).reshape(-1)[:max_det]
    if kept.size == 0:
        return ()
    boxes = xyxy[kept]
    boxes = scale_boxes(boxes, geometry)
    return tuple(
        Detection(
            label=names[int(c)],
            class_id=int(c),
            score=float(s),
            xyxy=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
        )
        for b, s, c in zip(boxes, scores[kept], class_ids[kept], strict=True)
    )


def scale_boxes(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Map x1, y1, x2, y2 boxes (N x 4, model-input pixels) back to source pixels, clipped."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - geometry.left) / geometry.gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - geometry.top) / geometry.gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, geometry.src_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, geometry.src_h)
    return out
