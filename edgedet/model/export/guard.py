"""The accuracy guard: a reduced-precision model against the fp32 model, at the detection level.

Both models' raw outputs go through the daemon's own ``decode`` (score threshold, class-aware NMS,
rescale to source pixels). Per image, detections are matched one-to-one within a class at
IoU >= ``MATCH_IOU``, greedily by IoU. Over all held-out frames: precision = matched / candidate
detections, recall = matched / fp32 detections, F1, and for matched pairs the worst box
coordinate difference (source pixels) and the worst score difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgedet.boxes import greedy_match, iou_matrix
from edgedet.errors import ModelError
from edgedet.postprocess import decode
from edgedet.preprocess import Letterbox
from edgedet.types import Detection

MATCH_IOU = 0.5
DEFAULT_MIN_F1 = 0.95


class AccuracyGuardError(ModelError):
    """The reduced-precision model disagrees with fp32 beyond ``--min-f1`` (exit 2)."""


@dataclass(frozen=True, slots=True)
class Agreement:
    """Detection-level agreement of a candidate model with the fp32 reference."""

    frames: int
    reference: int  # fp32 detections over all frames
    candidate: int
    matched: int
    precision: float
    recall: float
    f1: float
    worst_box_px: float  # max |coordinate difference| over matched pairs, source pixels
    worst_score: float  # max |score difference| over matched pairs

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        return (f"F1 {self.f1:.3f} (precision {self.precision:.3f}, recall {self.recall:.3f}; "
                f"{self.matched} of {self.reference} fp32 detections matched, {self.candidate} found) on "
                f"{self.frames} held-out frames; worst matched box {self.worst_box_px:.1f} px, "
                f"score {self.worst_score:.3f}")


def match(ref: Sequence[Detection], got: Sequence[Detection], iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """One-to-one pairs (ref index, got index) of the same class with IoU >= ``iou``, best IoU first."""
    if not ref or not got:
        return []
    ious = iou_matrix(np.asarray([d.xyxy for d in ref], dtype=np.float64),
                      np.asarray([d.xyxy for d in got], dtype=np.float64))
    same = np.asarray([[r.class_id == g.class_id for g in got] for r in ref])
    return greedy_match(np.where(same, ious, 0.0), iou)


def agreement(refs: Sequence[Sequence[Detection]], gots: Sequence[Sequence[Detection]],
              iou: float = MATCH_IOU) -> Agreement:
    """Agreement over images (``refs[i]`` fp32 detections, ``gots[i]`` the candidate's)."""
    if len(refs) != len(gots):
        raise ValueError(f"agreement: {len(refs)} reference images but {len(gots)} candidate images")
    n_ref = n_got = n_match = 0
    worst_box = worst_score = 0.0
    for ref, got in zip(refs, gots, strict=True):
        pairs = match(ref, got, iou)
        n_ref += len(ref)
        n_got += len(got)
        n_match += len(pairs)
        for i, j in pairs:
            worst_box = max(worst_box, max(abs(a - b) for a, b in zip(ref[i].xyxy, got[j].xyxy, strict=True)))
            worst_score = max(worst_score, abs(ref[i].score - got[j].score))
    precision = n_match / n_got if n_got else (1.0 if n_ref == 0 else 0.0)
    recall = n_match / n_ref if n_ref else (1.0 if n_got == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Agreement(len(refs), n_ref, n_got, n_match, precision, recall, f1, worst_box, worst_score)


def detections(infer: Callable[[np.ndarray], np.ndarray], tensors: Sequence[np.ndarray],
               geometry: Sequence[Letterbox], names: Sequence[str], conf: float = 0.25,
               iou: float = 0.7) -> list[tuple[Detection, ...]]:
    """Each tensor through ``infer`` and the daemon's decode (NMS, rescale to source pixels)."""
    return [decode(np.asarray(infer(x), dtype=np.float32), geo, names, conf=conf, iou=iou)
            for x, geo in zip(tensors, geometry, strict=True)]


def check(result: Agreement, min_f1: float, force: bool, what: str) -> str | None:
    """None when ``result`` passes; else raises AccuracyGuardError, or returns a warning under ``force``."""
    if result.reference == 0:
        return (f"{what}: the fp32 model found nothing on the held-out frames; the guard checked only that "
                "the candidate finds nothing either (give --val frames with objects)")
    if result.f1 >= min_f1:
        return None
    message = f"{what} fails the accuracy guard: {result.line()}; --min-f1 {min_f1:g}"
    if force:
        return message + " (written anyway: --force)"
    raise AccuracyGuardError(message + "; not written (use --force to write it anyway)")
