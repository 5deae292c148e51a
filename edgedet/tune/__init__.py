"""``edgedet tune``: measure, on this box and in one run, each candidate model (backend x
precision, any aspect-matched export) at each thread layout -- the raw forward and the daemon's
pipeline on a clip -- and recommend the fastest setup whose detections agree with fp32.

Candidates: the config's ``model.path``, every ``--model``, and the model files beside
``model.path`` exported from the same checkpoint (same ``source_sha256`` in their metadata). Each
measurement runs in its own child process, one at a time (``edgedet.bench.spawn``): thread
settings are process-wide and two runtimes at once on a small box slow each other down.

Accuracy comes from each model's export (``edgedet export`` stores the guard's figures): fp32 is
the reference; a reduced-precision model below ``--min-f1``, or without figures (unless
``--allow-unchecked``), is listed but never recommended.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgedet.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Candidate:
    path: str
    backend: str
    precision: str
    imgsz: tuple[int, int]
    f1: float | None  # agreement with fp32 from the export; 1.0 for fp32 itself
    accepted: bool
    why: str


def parse_layouts(text: str | None, cores: int) -> list[tuple[int, int]]:
    if not text:
        layouts = [(1, cores), (cores, 1)] + ([(2, cores // 2)] if cores >= 4 else [])
        return list(dict.fromkeys(layouts))
    out = []
    for item in text.split(","):
        try:
            w, t = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise InputError(f"--layouts: expected WxT,... such as 1x2,2x1 (got {item!r})") from None
        if w < 1 or t < 1:
            raise InputError(f"--layouts: workers and threads must be >= 1 (got {item!r})")
        out.append((w, t))
    return out


def _model_files(directory: Path) -> list[Path]:
    dirs = ("_openvino_model", "_ncnn_model") if importlib.util.find_spec("ncnn") else ("_openvino_model",)
    files = [p for p in directory.iterdir() if p.suffix in (".torchscript", ".onnx") and p.is_file()]
    files += [p for p in directory.iterdir() if p.is_dir() and p.name.endswith(dirs)]
    return sorted(files)


def judge(path: str, min_f1: float, allow_unchecked: bool) -> Candidate:
    from edgedet.model import resolve_backend
    from edgedet.modelinfo import accuracy, read_info

    info = read_info(path)
    agree = accuracy(info)
    precision = info.precision
    if precision == "fp32":
        f1, ok, why = 1.0, True, "fp32 reference"
    elif agree is None:
        f1, ok = None, allow_unchecked
        why = "no agreement figures" + (" (--allow-unchecked)" if allow_unchecked else "")
    else:
        f1 = float(agree["f1"])
        ok = f1 >= min_f1
        why = f"F1 {f1:.3f} {'>=' if ok else '<'} {min_f1:g}"
    return Candidate(path, resolve_backend(path), precision, info.imgsz, f1, ok, why)


def candidates(model_path: str, extra: list[str]) -> list[str]:
    from edgedet.modelinfo import read_info

    paths = [model_path, *extra]
    base = Path(model_path)
    try:
        sha = (read_info(model_path).extra.get("edgedet") or {}).get("source_sha256")
    except Exception:  # noqa: BLE001 - the config's model is judged (and reported) below
        sha = None
    if sha and base.parent.is_dir():
        for p in _model_files(base.parent):
            try:
                theirs = (read_info(str(p)).extra.get("edgedet") or {}).get("source_sha256")
            except Exception:  # noqa: BLE001 - not a model we can read: not a candidate
                continue
            if theirs == sha:
                paths.append(str(p))
    return _unique(paths)


def _unique(paths: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def main(args: argparse.Namespace) -> int:
    from edgedet.bench.spawn import BenchError, CandidateSpec, run_child
    from edgedet.config import load_config

    cfg = load_config(args.config)
    video = args.video or next((str(c.url) for c in cfg.cameras.values() if c.kind == "file"), None)
    if video is None:
        raise InputError("--video: the config has no file camera; give a clip recorded from your cameras")
    if not Path(video).is_file():
        raise InputError(f"--video {video}: no such file")
    cores = os.cpu_count() or 1
    layouts = parse_layouts(args.layouts, cores)
    models = [judge(p, args.min_f1, args.allow_unchecked) for p in candidates(cfg.model.path, args.model)]
    rows: list[dict[str, Any]] = []
    for cand in models:
        for workers, threads in layouts:
            log.info("tune: %s (%s %s) at %dx%d", cand.path, cand.backend, cand.precision, workers, threads)
            spec = CandidateSpec(model=cand.path, backend=cand.backend, video=video, frames=args.frames,
                                 workers=workers, threads=threads, queue_size=1, raw_iters=args.raw_iters)
            row: dict[str, Any] = {**asdict(cand), "workers": workers, "threads": threads}
            try:
                row.update(run_child(spec, timeout=300.0 + args.frames * 3.0))
            except BenchError as exc:
                row["error"] = str(exc)
            rows.append(row)
    ranked = sorted(rows, key=lambda r: -(r.get("pipeline_fps") or 0.0))
    best = next((r for r in ranked if r["accepted"] and "error" not in r), None)
    print(format_table(ranked, best), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": ranked, "best": best}, indent=2, default=str) + "\n")
    if best is None:
        print("no accepted candidate could be measured; nothing to recommend")
        return 1
    model_block = {"path": best["path"], "backend": best["backend"]}
    workers_block = {"count": best["workers"], "threads_per_worker": best["threads"]}
    print("\nrecommended (fastest accepted pipeline):\nmodel:\n"
          + "".join(f"  {k}: {v}\n" for k, v in model_block.items())
          + "workers:\n" + "".join(f"  {k}: {v}\n" for k, v in workers_block.items()), end="")
    if args.write:
        from edgedet.tune.configedit import write_recommendation

        backup = write_recommendation(Path(args.config), model_block, workers_block)
        print(f"wrote {args.config} (previous version: {backup})")
    return 0


def format_table(rows: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    head = (f"{'#':>2} {'model':34} {'backend':11} {'prec':5} {'input':8} {'layout':6} {'fwd ms':>7} "
            f"{'raw img/s':>9} {'pipe fps':>8} {'F1':>6}  verdict")
    lines = [head]
    for i, r in enumerate(rows, 1):
        name = Path(r["path"]).name[-34:]
        f1 = "-" if r["f1"] is None else f"{r['f1']:.3f}"
        size = "x".join(map(str, r["imgsz"]))
        if "error" in r:
            lines.append(f"{i:>2} {name:34} {r['backend']:11} {r['precision']:5} {size:8} "
                         f"{r['workers']}x{r['threads']:<4} error: {r['error']}")
            continue
        verdict = ("BEST " if r is best else "") + ("ok" if r["accepted"] else "not recommended") + f" ({r['why']})"
        lines.append(f"{i:>2} {name:34} {r['backend']:11} {r['precision']:5} {size:8} "
                     f"{r['workers']}x{r['threads']:<4} {r['forward_ms']:7.1f} {r['raw_img_s']:9.2f} "
                     f"{r['pipeline_fps']:8.2f} {f1:>6}  {verdict}")
    return "\n".join(lines)
