"""The bench's variant rows (``--variant PATH``, repeatable): other backends and precisions of the
demo model -- bf16 TorchScript, OpenVINO f32 / bf16 / int8, ONNX Runtime fp32 / int8, ncnn fp32 -- each at
1 x N and N x 1 threads, raw forward and pipeline, in ``candidate`` children; and the peer's
fastest CPU setup (``--ultra-int8``): Ultralytics' own ``export(format="openvino", int8=True)``
of ``--weights``, calibrated on frames of the bench clip, then run by its own ``predict`` -- at
640x640, and at each rect input size among the variants (``export(imgsz=(384, 640))``), so rect
compares with rect at the same input size.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from edgedet.bench.spawn import BenchError, CandidateSpec, UltraExportSpec, run_child

log = logging.getLogger(__name__)


def variant_layouts(cores: int) -> list[tuple[int, int]]:
    return list(dict.fromkeys([(1, cores), (cores, 1)]))


def run_variants(paths: list[Path], video: str, frames: int | None, raw_iters: int, queue_size: int,
                 cores: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    """One round: every variant at every layout; a failure is recorded on its row."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for workers, threads in variant_layouts(cores):
            key = f"{path.name} {workers}x{threads}"
            spec = CandidateSpec(model=str(path), backend="auto", video=video, frames=frames, workers=workers,
                                 threads=threads, queue_size=queue_size, raw_iters=raw_iters)
            log.info("variant %s", key)
            try:
                out.setdefault(key, []).append(run_child(spec, timeout=timeout))
            except BenchError as exc:
                log.warning("variant %s failed: %s", key, exc)
                out.setdefault(key, []).append({"error": str(exc)})
    return out


def summarise_variants(rounds: list[dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    merged: dict[str, list[dict[str, Any]]] = {}
    for rnd in rounds:
        for key, runs in rnd.items():
            merged.setdefault(key, []).extend(runs)
    rows = []
    for key, runs in merged.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            rows.append({"name": key, "error": runs[0]["error"]})
            continue
        first = ok[0]
        rows.append({
            "name": key, "model": first["model"], "backend": first["backend"], "precision": first["precision"],
            "imgsz": first["imgsz"], "workers": first["workers"], "threads": first["threads"],
            "forward_ms": round(statistics.median(r["forward_ms"] for r in ok), 2),
            "raw_img_s": round(statistics.median(r["raw_img_s"] for r in ok), 3),
            "pipeline_fps": round(statistics.median(r["pipeline_fps"] for r in ok), 3),
            "runs_fps": [round(r["pipeline_fps"], 3) for r in ok],
            "pipeline_vs_raw": round(statistics.median(r["pipeline_fps"] / r["raw_img_s"] for r in ok), 3),
            "f1": _f1(first["model"]),
        })
    return rows


def _f1(path: str) -> float | None:
    from edgedet.modelinfo import accuracy, read_info

    try:
        info = read_info(path)
    except Exception:  # noqa: BLE001 - a row without figures
        return None
    if info.precision == "fp32":
        return 1.0
    agree = accuracy(info)
    return None if agree is None else float(agree["f1"])


def rect_sizes(paths: list[Path]) -> list[list[int]]:
    """The distinct non-square input sizes [h, w] among the variant models (their metadata)."""
    from edgedet.modelinfo import read_info

    sizes: list[list[int]] = []
    for path in paths:
        try:
            h, w = read_info(str(path)).imgsz
        except Exception:  # noqa: BLE001 - its row reports the error
            continue
        if h != w and [h, w] not in sizes:
            sizes.append([h, w])
    return sizes


def export_ultra_int8(weights: Path, video: str, work: Path, imgsz: int | list[int],
                      frames: int = 60) -> dict[str, Any]:
    """Ultralytics' OpenVINO int8 export of ``weights`` (in a child), calibrated on ``frames`` frames."""
    spec = UltraExportSpec(weights=str(weights), video=video, work=str(work), imgsz=imgsz, frames=frames)
    return run_child(spec, timeout=1200.0)


def format_variants(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"   {'variant':44} {'backend':11} {'prec':5} {'input':7} {'fwd ms':>7} {'raw img/s':>9} "
             f"{'pipe fps':>8} {'pipe/raw':>8} {'F1':>6}  runs fps"]
    for r in rows:
        if "error" in r:
            lines.append(f"   {r['name']:44} error: {r['error']}")
            continue
        f1 = "-" if r["f1"] is None else f"{r['f1']:.3f}"
        size = "x".join(map(str, r["imgsz"]))
        lines.append(f"   {r['name']:44} {r['backend']:11} {r['precision']:5} {size:7} {r['forward_ms']:7.1f} "
                     f"{r['raw_img_s']:9.2f} {r['pipeline_fps']:8.2f} {r.get('pipeline_vs_raw', 0):8.3f} {f1:>6}  "
                     + " ".join(f"{v:.2f}" for v in r["runs_fps"]))
    return lines
