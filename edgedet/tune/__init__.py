"""``edgedet tune``: measure, on this box and in one run, each candidate model (backend x
precision, any aspect-matched export) at each thread layout -- the raw forward and the daemon's
pipeline on a clip -- and recommend the fastest setup whose detections agree with fp32.

Candidates: the config's ``model.path``, every ``--model``, and the model files beside
``model.path`` (and in ``--export-dir``) exported from the same checkpoint (same ``source_sha256``
in their metadata), plus aspect-matched twins for the cameras' frame aspect (``edgedet.tune.rect``:
exported here with ``--weights``, else the ``edgedet export`` commands are printed). Each
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
from dataclasses import asdict, dataclass, replace
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
    stride: int = 32


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
    return Candidate(path, resolve_backend(path), precision, info.imgsz, f1, ok, why, info.stride)


def source_sha(path: str) -> str | None:
    """The ``source_sha256`` (the checkpoint) an edgedet export records, or None."""
    from edgedet.modelinfo import read_info

    try:
        sha = (read_info(path).extra.get("edgedet") or {}).get("source_sha256")
    except Exception:  # noqa: BLE001 - not a model we can read (the config's model is judged and reported later)
        return None
    return str(sha) if sha else None


def candidates(model_path: str, extra: list[str], dirs: list[Path] | None = None) -> list[str]:
    """``model_path``, ``extra``, and the models in ``model_path``'s folder (and ``dirs``) exported
    from the same checkpoint."""
    paths = [model_path, *extra]
    sha = source_sha(model_path)
    folders = [Path(model_path).parent, *(dirs or [])]
    if sha:
        for folder in _unique([str(d) for d in folders if d.is_dir()]):
            paths += [str(p) for p in _model_files(Path(folder)) if source_sha(str(p)) == sha]
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
    export_dir = Path(args.export_dir) if args.export_dir else Path(cfg.model.path).parent
    paths = candidates(cfg.model.path, args.model, [export_dir])
    models = [judge(p, args.min_f1, args.allow_unchecked) for p in paths]
    models += add_rect_candidates(args, cfg, video, models, export_dir)
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


def add_rect_candidates(args: argparse.Namespace, cfg: Any, video: str, models: list[Candidate],
                        export_dir: Path) -> list[Candidate]:
    """Aspect-matched twins of the candidates (``edgedet.tune.rect``): exported with ``--weights``,
    else the commands are printed. Returns the new candidates; marks every rect model that does not
    suit all cameras as not recommended (in place in ``models``)."""
    from edgedet.modelinfo import read_info
    from edgedet.tune.rect import camera_aspects, export_args, fits, missing_variants, run_export, shell_line

    aspects = camera_aspects(cfg.cameras, video)

    def fitted(cand: Candidate) -> Candidate:
        why = fits(cand.imgsz, cand.stride, aspects)
        return replace(cand, accepted=False, why=why) if why is not None and cand.accepted else cand

    models[:] = [fitted(c) for c in models]
    sha = source_sha(cfg.model.path)
    ours = [(c.path, c.backend, c.precision, c.imgsz, c.stride, read_info(c.path).extra.get("edgedet") or {})
            for c in models if sha and source_sha(c.path) == sha]
    missing = missing_variants(ours, aspects, export_dir)
    if not missing:
        return []
    if args.weights is None:
        print(f"no aspect-matched model for {', '.join(sorted({v.aspect.ratio for v in missing}))} frames; "
              "add one per format and precision with (then run tune again):")
        weights = str(read_info(cfg.model.path).extra.get("edgedet", {}).get("source") or "WEIGHTS.pt")
        for v in missing:
            print("  " + shell_line(export_args(v, weights, video, args.min_f1)))
        return []
    from edgedet.model.export.trace import sha256_file

    if not Path(args.weights).is_file():
        raise InputError(f"--weights {args.weights}: no such file")
    if sha and sha256_file(Path(args.weights)) != sha:
        raise InputError(f"--weights {args.weights}: not the checkpoint {cfg.model.path} was exported from "
                         "(its sha256 differs from the model's source_sha256)")
    added = []
    for v in missing:
        cmd = export_args(v, args.weights, video, args.min_f1)
        print(f"exporting {v.output.name} ({v.fmt} {v.precision} {v.imgsz[0]}x{v.imgsz[1]} for "
              f"{v.aspect.ratio}): {shell_line(cmd)}", flush=True)
        ok, line = run_export(cmd)
        print(f"  {'ok' if ok else 'failed'}: {line}", flush=True)
        if ok:
            added.append(fitted(judge(str(v.output), args.min_f1, args.allow_unchecked)))
    return added


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
