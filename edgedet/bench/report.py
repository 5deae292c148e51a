"""The bench report: per-row medians over rounds, the ratios and targets, and the printed table.

Everything here works on the children's JSON results (plain dicts, as written to ``--json``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgedet.bench.costs import format_costs
from edgedet.bench.spawn import UltraRow

# Targets (printed, never asserted by tests).
TARGET_PIPELINE_VS_RAW = 0.95
TARGET_VS_ULTRA_TORCHSCRIPT = 1.5
TARGET_VS_ULTRA_PT = 1.2
TARGET_LIVE_P50_SLACK_MS = 15.0
TARGET_VS_ULTRA_FASTEST = 1.2  # edgedet's fastest accepted setup vs Ultralytics' OpenVINO int8
TARGET_MIN_F1 = 0.95


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise_raw(runs: list[dict[str, Any]]) -> dict[str, Any]:
    layouts = []
    for i, first in enumerate(runs[0]["raw"]):
        per_round = [run["raw"][i] for run in runs]
        img_s = _median([r["img_s"] for r in per_round])
        layouts.append({
            "name": first["name"],
            "workers": first["workers"],
            "threads": first["threads"],
            "where": first["where"],
            "threads_observed": sorted({t for r in per_round for t in r["threads_observed"]}),
            "img_s": _r(img_s),
            "ms_img": _r(1000.0 / img_s, 2),
            "img_s_robust": _r(_median([r["img_s_robust"] for r in per_round])),
            "call_ms": _r(_median([r["call_ms"] for r in per_round]), 2),
            "runs_img_s": [_r(r["img_s"]) for r in per_round],
            "iters": first["iters"],
        })
    best = max(layouts, key=lambda row: row["img_s"])
    return {
        "method": "TorchScriptDetector.infer() on one preprocessed frame (channels_last model), "
                  "median over rounds",
        "imgsz": runs[0]["imgsz"],
        "layouts": layouts,
        "best": {k: best[k] for k in ("name", "workers", "threads", "where", "img_s", "ms_img")},
    }


def _stage_medians(runs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    names = runs[0][key].keys()
    return {n: _r(_median([run[key][n] for run in runs]), 2) for n in names}


def summarise_pipeline(runs: list[dict[str, Any]]) -> dict[str, Any]:
    pipes = [run["pipeline"] for run in runs]
    return {
        "method": "FrameHub + CameraSet/CaptureWorker(file, realtime=False, back-pressure) + "
                  "WorkerPool/InferenceWorker(s) + counting sink, real Metrics, no MQTT; "
                  "(n-1)/(t_last-t_first) over all frames",
        "workers": pipes[0]["workers"],
        "threads": pipes[0]["threads"],
        "threads_observed": sorted({t for p in pipes for t in p["threads_observed"]}),
        "queue_size": pipes[0]["queue_size"],
        "frames": pipes[0]["frames"],
        **_fps_medians(pipes),
        "stages_ms": _stage_medians(pipes, "stages_ms"),
    }


def _fps_medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """fps (median over rounds), its ms/frame, the robust fps and each round's fps."""
    fps = _median([run["fps"] for run in runs])
    return {
        "fps": _r(fps),
        "ms_frame": _r(1000.0 / fps, 2),
        "fps_robust": _r(_median([run["fps_robust"] for run in runs])),
        "runs_fps": [_r(run["fps"]) for run in runs],
    }


def summarise_diag(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "method": "serial per-frame costs outside the forward, main thread, nothing else running in the process",
        **_stage_medians(runs, "diag_ms"),
    }


def summarise_ultra(
    rows: list[UltraRow],
    runs: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    note: str | None,
) -> dict[str, Any]:
    out_rows = []
    for row in rows:
        got = runs.get(row.name) or []
        if not got:
            out_rows.append({**asdict(row), "error": errors.get(row.name, "not measured")})
            continue
        out_rows.append({
            "name": row.name,
            "format": row.format,
            "weights": row.weights,
            "threads_requested": row.threads,
            "threads_observed": sorted({t for g in got for t in g["threads_observed"]}),
            "input_shape": got[0]["input_shape"],
            "frames": got[0]["frames"],
            **_fps_medians(got),
            "inference_ms": _r(_median([g["inference_ms"] for g in got]), 2),
        })

    def best(fmt: str) -> dict[str, Any] | None:
        ok = [r for r in out_rows if r.get("format") == fmt and r.get("fps")]
        return max(ok, key=lambda r: r["fps"]) if ok else None

    return {
        "available": bool(out_rows) and any("fps" in r for r in out_rows),
        "note": note,
        "method": "YOLO(weights).predict(source=video, stream=True, imgsz=..., verbose=False), own process; "
                  "(n-1)/(t_last-t_first) over all frames",
        "rows": out_rows,
        "best_torchscript": _pick(best("torchscript")),
        "best_pt": _pick(best("pt")),
    }


def _pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("name", "fps", "threads_observed", "input_shape")}


def summarise_rect(
    report: dict[str, Any], runs: list[dict[str, Any]], path: str, imgsz: Sequence[int]
) -> dict[str, Any]:
    raw = summarise_raw(runs)
    pipe = summarise_pipeline(runs)
    return {
        "model": path,
        "imgsz": list(imgsz),
        "raw": raw,
        "pipeline": pipe,
        "speedup_raw": _ratio(raw["best"]["img_s"], report["raw"]["best"]["img_s"], "rect raw best / square raw best"),
        "speedup_pipeline": _ratio(pipe["fps"], report["pipeline"]["fps"], "rect pipeline / square pipeline"),
    }


def _ratio(a: float | None, b: float | None, what: str) -> dict[str, Any]:
    value = None if a is None or b is None or b == 0 else round(a / b, 3)
    return {"what": what, "a": a, "b": b, "value": value}


def ratios_and_targets(report: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pipe = report["pipeline"]["fps"]
    ultra = report["ultralytics"]
    ts, pt = ultra["best_torchscript"], ultra["best_pt"]
    ratios = {
        "pipeline_vs_raw": _ratio(pipe, report["raw"]["best"]["img_s"], "pipeline fps / raw best img/s"),
        "pipeline_vs_ultralytics_torchscript": _ratio(
            pipe, ts["fps"] if ts else None, "pipeline fps / Ultralytics TorchScript (best threads) fps"),
        "pipeline_vs_ultralytics_pt": _ratio(
            pipe, pt["fps"] if pt else None, "pipeline fps / Ultralytics .pt best fps"),
    }
    if report.get("rect"):
        ratios["rect_pipeline_vs_ultralytics_pt"] = _ratio(
            report["rect"]["pipeline"]["fps"], pt["fps"] if pt else None,
            "rect pipeline fps / Ultralytics .pt best fps (same input size)")
    fastest = _fastest_accepted(report)
    peer = ultra.get("best_any")
    if fastest is not None and peer:
        ratios["fastest_vs_ultralytics_fastest"] = _ratio(
            fastest["pipeline_fps"], peer["fps"],
            f"edgedet fastest accepted ({fastest['name']}) / Ultralytics fastest ({peer['name']})")
    ratios.update(_same_size_ratios(report))
    live = report["live"]
    p50, inf = live["e2e_ms"]["p50"], live["stages_ms"]["inference"]
    limit = None if inf is None else round(inf + TARGET_LIVE_P50_SLACK_MS, 2)

    def target(name: str, value: float | None, lim: float | None, higher: bool) -> dict[str, Any]:
        ok = None if value is None or lim is None else (value >= lim if higher else value <= lim)
        return {"name": name, "value": value, "limit": lim, "ok": ok}

    targets = [
        target(f"pipeline >= {TARGET_PIPELINE_VS_RAW}x raw best", ratios["pipeline_vs_raw"]["value"],
               TARGET_PIPELINE_VS_RAW, True),
        target(f"pipeline >= {TARGET_VS_ULTRA_TORCHSCRIPT}x Ultralytics TorchScript",
               ratios["pipeline_vs_ultralytics_torchscript"]["value"], TARGET_VS_ULTRA_TORCHSCRIPT, True),
        target(f"pipeline >= {TARGET_VS_ULTRA_PT}x Ultralytics .pt best",
               ratios["pipeline_vs_ultralytics_pt"]["value"], TARGET_VS_ULTRA_PT, True),
        target(f"live p50 <= inference median + {TARGET_LIVE_P50_SLACK_MS:g} ms", p50, limit, False),
    ]
    if "fastest_vs_ultralytics_fastest" in ratios:
        targets.append(target(f"fastest accepted >= {TARGET_VS_ULTRA_FASTEST}x Ultralytics fastest",
                              ratios["fastest_vs_ultralytics_fastest"]["value"], TARGET_VS_ULTRA_FASTEST, True))
    return ratios, targets


def _fastest_accepted(report: dict[str, Any], imgsz: Sequence[int] | None = None) -> dict[str, Any] | None:
    """The fastest variant row whose F1 against fp32 (from its export) is >= TARGET_MIN_F1 (of that
    input size, when given)."""
    rows = [r for r in report.get("variants") or [] if "error" not in r and (r.get("f1") or 0) >= TARGET_MIN_F1
            and (imgsz is None or list(r["imgsz"]) == list(imgsz))]
    return max(rows, key=lambda r: r["pipeline_fps"], default=None)


def _ultra_int8(report: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """The fastest Ultralytics OpenVINO int8 row per input size (h, w) it ran at."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for row in report["ultralytics"]["rows"]:
        if row.get("format") != "openvino" or not row.get("fps") or not row.get("input_shape"):
            continue
        size = (int(row["input_shape"][-2]), int(row["input_shape"][-1]))
        if size not in best or row["fps"] > best[size]["fps"]:
            best[size] = row
    return best


def _same_size_ratios(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """edgedet's fastest accepted setup against Ultralytics' int8 at the same input size (square,
    and each rect size both ran), and edgedet's fastest of any size against Ultralytics' square int8."""
    out: dict[str, dict[str, Any]] = {}
    peers = _ultra_int8(report)
    overall = _fastest_accepted(report)
    for (h, w), peer in sorted(peers.items(), key=lambda kv: -kv[0][0]):
        ours = _fastest_accepted(report, (h, w))
        kind = "square" if h == w else "rect"
        if ours is not None:
            out[f"{kind}_{h}x{w}_vs_ultralytics_int8_{h}x{w}"] = _ratio(
                ours["pipeline_fps"], peer["fps"],
                f"same input {h}x{w}: edgedet {ours['name']} / Ultralytics {peer['name']}")
        if h == w and overall is not None and list(overall["imgsz"]) != [h, w]:
            out[f"fastest_vs_ultralytics_int8_{h}x{w}"] = _ratio(
                overall["pipeline_fps"], peer["fps"],
                f"edgedet fastest ({overall['name']}) / Ultralytics {peer['name']} ({h}x{w})")
    return out


def format_report(rep: dict[str, Any]) -> str:
    m, c = rep["machine"], rep["config"]
    lines: list[str] = []
    add = lines.append
    load = m.get("loadavg_start"), m.get("loadavg_end")
    add(f"edgedet bench -- {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), torch {m['torch']} "
        f"(default {m['torch_default_threads']} threads), opencv {m['opencv']}, ultralytics {m['ultralytics'] or '-'}")
    add(f"video {c['video']} ({c['video_size']}), model {Path(c['model']).name} "
        f"{'x'.join(map(str, c['model_imgsz']))}, frames {c['frames'] or 'all'}, {c['repeats']} round(s)"
        + (" [quick]" if c["quick"] else ""))
    other = m.get("other_cpu_pct")
    if load[0] and load[1]:
        busy = other is not None and other > 5.0
        add(f"load average {load[0][0]:.2f} -> {load[1][0]:.2f}; other processes used "
            f"{_fmt(other, 1)}% of the CPU during the run" + ("  (box busy: numbers are noisy)" if busy else ""))

    raw = rep["raw"]
    add("")
    add(f"1. raw forward, {'x'.join(map(str, raw['imgsz']))} channels_last (TorchScriptDetector.infer, one frame)")
    add(f"   {'workers x threads':34} {'img/s':>7} {'ms/img':>7} {'call ms':>8} {'robust':>7}  runs img/s")
    for row in raw["layouts"]:
        add(f"   {_layout(row):34} {row['img_s']:7.2f} {row['ms_img']:7.1f} {row['call_ms']:8.1f} "
            f"{row['img_s_robust']:7.2f}  " + " ".join(f"{v:.2f}" for v in row["runs_img_s"]))
    add(f"   best: {raw['best']['name']} -> {raw['best']['img_s']:.2f} img/s")

    p = rep["pipeline"]
    add("")
    add(f"2. edgedet pipeline (file, back-pressure, queue {p['queue_size']}, {p['workers']} worker x {p['threads']} "
        f"threads, observed {p['threads_observed']}), {p['frames']} frames")
    add(f"   fps {p['fps']:.2f}  ({p['ms_frame']:.1f} ms/frame)  robust {p['fps_robust']:.2f}  runs "
        + " ".join(f"{v:.2f}" for v in p["runs_fps"]))
    add("   stage medians ms: " + _stages(p["stages_ms"]))
    d = rep["diagnostics"]
    add("   serial costs ms: " + _stages({k: v for k, v in d.items() if k != "method"}))

    u = rep["ultralytics"]
    add("")
    add("3. Ultralytics predict(stream=True), own process" + (f" -- {u['note']}" if u["note"] else ""))
    if u["rows"]:
        add(f"   {'row':26} {'input':>9} {'threads':>8} {'fps':>7} {'ms/frame':>9} {'infer ms':>9} {'robust':>7}"
            "  runs fps")
    for row in u["rows"]:
        if "error" in row:
            add(f"   {row['name']:26} error: {row['error']}")
            continue
        shape = "x".join(map(str, row["input_shape"][-2:])) if row["input_shape"] else "?"
        threads = f"{row['threads_requested'] or 'def'}->{','.join(map(str, row['threads_observed']))}"
        add(f"   {row['name']:26} {shape:>9} {threads:>8} {row['fps']:7.2f} "
            f"{row['ms_frame']:9.1f} {row['inference_ms']:9.1f} {row['fps_robust']:7.2f}  "
            + " ".join(f"{v:.2f}" for v in row["runs_fps"]))

    lv = rep["live"]
    add("")
    add(f"4. live: {lv['source_detail']}, {lv['seconds']:g} s, {lv['workers']} worker x {lv['threads']} threads, "
        f"queue {lv['queue_size']}")
    e, a = lv["e2e_ms"], lv["frame_age_ms"]
    add(f"   end-to-end ms p50 {e['p50']:.1f}  p95 {e['p95']:.1f}  p99 {e['p99']:.1f}   "
        f"frame age ms p50 {a['p50']:.1f}  p95 {a['p95']:.1f}  max {a['max']:.1f}")
    add(f"   captured {lv['captured']}  processed {lv['processed']}  dropped {lv['dropped']}  "
        f"drop rate {lv['drop_rate']:.3f}  processed fps {lv['processed_fps']:.2f}"
        + (f"  rtsp server CPU {lv['rtsp_server_cpu_pct']:.0f}%" if lv.get("rtsp_server_cpu_pct") is not None else ""))
    add("   stage medians ms: " + _stages(lv["stages_ms"]))

    vw = rep.get("viewers")
    if vw:
        add(f"   {vw['viewers']} live MJPEG viewers ({vw['phases']} alternating phases of {vw['phase_s']:g} s): "
            f"pipeline fps {vw['fps_without']:.2f} without, {vw['fps_with']:.2f} with = {vw['ratio']:.3f}x; "
            f"{vw['encoded']} JPEGs encoded for {vw['parts_received']} parts sent")

    if rep.get("variants"):
        from edgedet.bench.variants import format_variants

        add("")
        add("variants: other backends and precisions (F1: detection agreement with fp32, from the export)")
        for line in format_variants(rep["variants"]):
            add(line)
        export = rep.get("ultra_int8_export")
        for made in (export or {}).get("exports") or ([export] if export else []):
            size = made.get("imgsz", 640)
            add(f"   Ultralytics int8 export {'x'.join(map(str, size)) if isinstance(size, list) else size}: "
                f"{made['export_s']:.0f} s on {made['frames']} clip frames")

    rect = rep.get("rect")
    if rect:
        add("")
        add(f"rect model {Path(rect['model']).name} {'x'.join(map(str, rect['imgsz']))}: raw best "
            f"{rect['raw']['best']['img_s']:.2f} img/s ({rect['raw']['best']['name']}), pipeline "
            f"{rect['pipeline']['fps']:.2f} fps; speed-up vs square: raw {_fmt(rect['speedup_raw']['value'])}x, "
            f"pipeline {_fmt(rect['speedup_pipeline']['value'])}x")

    add("")
    add("5. ratios and targets")
    for r in rep["ratios"].values():
        add(f"   {r['what']:62} {_fmt(r['value'])}")
    for t in rep["targets"]:
        verdict = {True: "OK", False: "MISS", None: "n/a"}[t["ok"]]
        add(f"   {t['name']:62} {_fmt(t['value'])} (limit {_fmt(t['limit'])}) {verdict}")
    if "costs" in rep:
        add("")
        lines.extend(format_costs(rep["costs"]))
    add(f"   elapsed {rep.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def _layout(row: dict[str, Any]) -> str:
    where = "main thread" if row["where"] == "main" else "Python thread" + ("s" if row["workers"] > 1 else "")
    observed = ",".join(map(str, row["threads_observed"]))
    return f"{row['workers']} x {row['threads']} ({where}; saw {observed})"


def _stages(stages: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_fmt(v, 2)}" for k, v in stages.items())


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
