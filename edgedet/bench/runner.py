"""The bench run: rounds of measurement children, one at a time, then the live row and the report.

Per round: raw layouts + pipeline (one ``edge`` child per model), then each Ultralytics row (one
``ultra`` child each), so slow drift of the machine hits every row alike; each row reports the
median over rounds.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from edgedet.bench.costs import measure_costs
from edgedet.bench.live import run_live, run_viewers
from edgedet.bench.machine import (
    cpu_snapshot,
    has_module,
    loadavg,
    machine_info,
    module_version,
    other_cpu_pct,
    warn_if_busy,
)
from edgedet.bench.options import Options
from edgedet.bench.report import (
    ratios_and_targets,
    summarise_diag,
    summarise_pipeline,
    summarise_raw,
    summarise_rect,
    summarise_ultra,
)
from edgedet.bench.spawn import BenchError, EdgeSpec, UltraRow, UltraSpec, run_child
from edgedet.bench.variants import export_ultra_int8, rect_sizes, run_variants, summarise_variants
from edgedet.model.torchscript import read_metadata  # no torch

log = logging.getLogger(__name__)


def run_bench(opts: Options) -> dict[str, Any]:
    info = read_metadata(opts.model)
    rect_info = read_metadata(opts.model_rect) if opts.model_rect else None
    started = time.monotonic()
    load_start = loadavg()
    machine = machine_info()
    warn_if_busy(machine["cores"])
    cpu_start = cpu_snapshot()

    def edge_spec(model: str) -> EdgeSpec:
        return EdgeSpec(model=model, video=str(opts.video), frames=opts.frames, workers=opts.workers,
                        threads=opts.threads, queue_size=opts.queue_size, raw_iters=opts.raw_iters)

    ultra_rows = _ultra_rows(opts, info.imgsz, machine["cores"]) if opts.ultralytics else []
    ultra_note = None
    if opts.ultralytics and not has_module("ultralytics"):
        ultra_rows, ultra_note = [], "ultralytics is not installed: rows skipped"
    elif not opts.ultralytics:
        ultra_note = "skipped (--no-ultralytics)"

    edge_runs: list[dict[str, Any]] = []
    rect_runs: list[dict[str, Any]] = []
    ultra_runs: dict[str, list[dict[str, Any]]] = {r.name: [] for r in ultra_rows}
    ultra_errors: dict[str, str] = {}
    for rnd in range(opts.repeats):
        log.info("round %d/%d: raw + pipeline (%s)", rnd + 1, opts.repeats, opts.model.name)
        edge_runs.append(run_child(edge_spec(str(opts.model)), timeout=_edge_timeout(opts)))
        if opts.model_rect is not None:
            log.info("round %d/%d: raw + pipeline (%s)", rnd + 1, opts.repeats, opts.model_rect.name)
            rect_runs.append(run_child(edge_spec(str(opts.model_rect)), timeout=_edge_timeout(opts)))
        for row in ultra_rows:
            if row.name in ultra_errors:
                continue
            log.info("round %d/%d: ultralytics %s", rnd + 1, opts.repeats, row.name)
            env = {"OMP_NUM_THREADS": str(row.threads)} if row.threads else {}
            try:
                spec = UltraSpec.of(row, video=str(opts.video), frames=opts.frames)
                ultra_runs[row.name].append(run_child(spec, timeout=_ultra_timeout(opts), env=env))
            except BenchError as exc:
                log.warning("ultralytics %s failed: %s", row.name, exc)
                ultra_errors[row.name] = str(exc)

    variant_rounds, ultra_int8 = _variant_rounds(opts, machine["cores"], ultra_rows, ultra_runs, ultra_errors)
    live = run_live(opts)
    viewers = run_viewers(opts) if opts.viewers else None
    report: dict[str, Any] = {
        "machine": {**machine, **_torch_info(edge_runs[0]), "loadavg_start": load_start, "loadavg_end": loadavg(),
                    "other_cpu_pct": other_cpu_pct(cpu_start, cpu_snapshot(), machine["cores"])},
        "config": {
            "video": str(opts.video),
            "video_size": edge_runs[0]["video_size"],
            "model": str(opts.model),
            "model_imgsz": list(info.imgsz),
            "frames": opts.frames,
            "repeats": opts.repeats,
            "raw_iters": opts.raw_iters,
            "live_seconds": opts.live_seconds,
            "quick": opts.quick,
            "children_env": "OMP_NUM_THREADS removed (set only for forced-thread Ultralytics rows)",
        },
        "raw": summarise_raw(edge_runs),
        "pipeline": summarise_pipeline(edge_runs),
        "diagnostics": summarise_diag(edge_runs),
        "ultralytics": summarise_ultra(ultra_rows, ultra_runs, ultra_errors, ultra_note),
        "live": live,
        "viewers": viewers,
        "rect": None,
    }
    report["variants"] = summarise_variants(variant_rounds) if variant_rounds else None
    report["ultra_int8_export"] = ultra_int8
    if report["ultralytics"]["rows"]:
        report["ultralytics"]["best_any"] = _pick_best(report["ultralytics"]["rows"])
    if rect_info is not None and rect_runs:
        report["rect"] = summarise_rect(report, rect_runs, str(opts.model_rect), rect_info.imgsz)
    report["ratios"], report["targets"] = ratios_and_targets(report)
    report["costs"] = measure_costs()  # tracker and motion measure, in this process (no torch)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


def _variant_rounds(opts: Options, cores: int, ultra_rows: list[UltraRow],
                    ultra_runs: dict[str, list[dict[str, Any]]], ultra_errors: dict[str, str],
                    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Variant rows and the Ultralytics int8 peer row, round by round (after the main rounds)."""
    import tempfile
    from pathlib import Path

    if not opts.variants and not (opts.ultra_int8 and opts.weights is not None):
        return [], None
    with tempfile.TemporaryDirectory(prefix="edgedet-bench-ultra-int8-") as tmp:
        export: dict[str, Any] | None = None
        rows: list[UltraRow] = []
        if opts.ultra_int8 and opts.weights is not None:
            work = Path(tmp)
            shutil.copy2(opts.weights, work / opts.weights.name)  # export() writes beside the weights
            rects = rect_sizes([*opts.variants, *([opts.model_rect] if opts.model_rect else [])])
            sizes: list[int | list[int]] = [640, *rects]
            for size in sizes:
                tag = "" if isinstance(size, int) else "x".join(map(str, size)) + " "
                try:
                    made = export_ultra_int8(work / opts.weights.name, str(opts.video), work, size)
                except BenchError as exc:
                    log.warning("ultralytics int8 export %sfailed: %s", tag, exc)
                    ultra_errors[f"openvino int8 {tag}".strip()] = str(exc)
                    continue
                entry = {**made, "imgsz": size}
                export = export if export is not None else dict(made)
                export.setdefault("exports", []).append(entry)
                for threads in ([None] if opts.ultra_default_threads else []) + [cores]:
                    label = "default threads" if threads is None else f"{threads} threads"
                    rows.append(UltraRow(name=f"openvino int8 {tag}{label}", format="openvino",
                                         weights=made["model"], imgsz=size, rect=False, threads=threads))
        ultra_rows.extend(rows)
        rounds = []
        for rnd in range(opts.repeats):
            log.info("round %d/%d: variants", rnd + 1, opts.repeats)
            rounds.append(run_variants(list(opts.variants), str(opts.video), opts.frames, opts.raw_iters,
                                       opts.queue_size, cores, _edge_timeout(opts)))
            for row in rows:
                env = {"OMP_NUM_THREADS": str(row.threads)} if row.threads else {}
                try:
                    spec = UltraSpec.of(row, video=str(opts.video), frames=opts.frames)
                    ultra_runs.setdefault(row.name, []).append(run_child(spec, timeout=_ultra_timeout(opts), env=env))
                except BenchError as exc:
                    ultra_errors[row.name] = str(exc)
    return [r for r in rounds if r], export


def _pick_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if r.get("fps")]
    return {k: r[k] for k in ("name", "fps")} if (r := max(ok, key=lambda x: x["fps"], default=None)) else None


def _edge_timeout(opts: Options) -> float:
    frames = opts.frames or 1000
    return 180.0 + frames * 1.5 + opts.raw_iters * 5 * 2.0


def _ultra_timeout(opts: Options) -> float:
    return 180.0 + (opts.frames or 1000) * 2.0


def _ultra_rows(opts: Options, imgsz: tuple[int, int], cores: int) -> list[UltraRow]:
    """Ultralytics configurations: TorchScript file (square) and the .pt checkpoint (rect letterbox)."""
    targets: list[tuple[str, str, list[int] | int, bool]] = [("torchscript", str(opts.model), list(imgsz), False)]
    if opts.weights is not None:
        targets.append(("pt", str(opts.weights), max(imgsz), True))
    thread_opts: list[int | None] = ([None] if opts.ultra_default_threads else []) + [cores]
    rows = []
    for kind, weights, size, rect in targets:
        for threads in thread_opts:
            label = "default threads" if threads is None else f"{threads} threads"
            rows.append(UltraRow(name=f"{kind} {label}", format=kind, weights=weights, imgsz=size, rect=rect,
                                 threads=threads))
    return rows


def _torch_info(edge: dict[str, Any]) -> dict[str, Any]:
    return {k: edge[k] for k in ("torch", "opencv", "torch_default_threads")} | {
        "ultralytics": module_version("ultralytics")
    }
