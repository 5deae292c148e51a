"""Command line: ``edgedet export|detect|info|tune|run|check-config|fleet|bench``.

Exit codes: 0 ok, 1 runtime failure, 2 bad config or bad input. An ``EdgedetError`` becomes
``error: <line>`` on stderr (``edgedet.errors.report``), never a traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edgedet import __version__
from edgedet.errors import EdgedetError, InputError, report
from edgedet.logs import scrub, setup_logging

log = logging.getLogger("edgedet")


def _cmd_export(args: argparse.Namespace) -> int:
    from edgedet.model.export.trace import ReducedOptions, export, parse_imgsz, rect_imgsz

    imgsz = parse_imgsz(args.imgsz)
    if args.rect:
        if imgsz[0] != imgsz[1]:
            raise InputError("--rect takes a single --imgsz (the long side), not H,W")
        imgsz = rect_imgsz(imgsz[0], args.rect)
    report = export(
        Path(args.weights),
        output=Path(args.output) if args.output else None,
        imgsz=imgsz,
        half=args.half,
        device=args.device,
        check_image=Path(args.check_image) if args.check_image else None,
        format=args.format,
        precision=_precision(args),
        reduced=ReducedOptions(calib=args.calib, val=args.val, calib_frames=args.calib_frames,
                               val_frames=args.val_frames, min_f1=args.min_f1, force=args.force,
                               stream_seconds=args.stream_seconds),
    )
    for line in report.lines():
        print(line)
    return 0


def _precision(args: argparse.Namespace) -> str:
    if args.half and args.precision not in (None, "fp16"):
        raise InputError(f"--half is --precision fp16; it cannot be combined with --precision {args.precision}")
    return str(args.precision or ("fp16" if args.half else "fp32"))


def _cmd_info(args: argparse.Namespace) -> int:
    from edgedet.modelinfo import describe

    print(describe(args.model, args.backend, as_json=args.json))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from edgedet.tune import main as tune_main  # lazy: measurement children import the runtimes

    return tune_main(args)


def _parse_classes(values: Sequence[str] | None, names: Sequence[str]) -> list[int] | None:
    if not values:
        return None
    from edgedet.postprocess import class_ids

    items = [item.strip() for item in ",".join(values).split(",") if item.strip()]
    try:
        return class_ids(items, names)
    except ValueError as exc:
        raise InputError(f"--classes: {exc}") from None


def _cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    from edgedet.model import load_detector, resolve_backend
    from edgedet.postprocess import decode
    from edgedet.preprocess import Preprocessor

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads: expected a count >= 1 (got {args.threads})")
    if args.half and args.device == "cpu" and resolve_backend(args.model, args.backend) != "ncnn":
        raise InputError("--half: fp16 needs --device cuda (on the CPU only an ncnn model has it)")
    detector = load_detector(args.model, device=args.device, backend=args.backend, half=args.half or None,
                             threads=args.threads)
    info = detector.info
    classes = _parse_classes(args.classes, info.names)
    pre = Preprocessor(*info.imgsz, dtype=detector.np_dtype, layout=detector.input_layout)
    save_dir = Path(args.save_annotated) if args.save_annotated else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for image_path in args.images:
        image = cv2.imread(image_path, cv2.IMREAD_UNCHANGED)
        if image is None:
            print(f"error: {image_path}: cannot read image (missing, unreadable or not an image)", file=sys.stderr)
            status = 2
            continue
        try:
            t0 = time.perf_counter()
            tensor, geo = pre(image)
            t1 = time.perf_counter()
            raw = detector.infer(tensor)
            t2 = time.perf_counter()
            dets = decode(raw, geo, info.names, conf=args.conf, iou=args.iou, classes=classes, max_det=args.max_det)
            t3 = time.perf_counter()
        except InputError as exc:
            print(f"error: {image_path}: {exc}", file=sys.stderr)
            status = 2
            continue
        record = {
            "image": Path(image_path).name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "model": info.name,
            "detections": [d.as_dict() for d in dets],
            "timing_ms": {
                "preprocess": round((t1 - t0) * 1000, 2),
                "inference": round((t2 - t1) * 1000, 2),
                "postprocess": round((t3 - t2) * 1000, 2),
            },
        }
        print(json.dumps(record), flush=True)
        if save_dir:
            from edgedet.draw import annotate

            cv2.imwrite(str(save_dir / Path(image_path).name), annotate(image, dets))
    return status


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edgedet.config import dump_config, load_config

    cfg = load_config(args.file)
    sys.stdout.write(dump_config(cfg))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edgedet.app import run
    from edgedet.config import load_config

    cfg = load_config(args.config)
    setup_logging(args.log_level or cfg.log_level, cfg.secrets())
    return run(cfg, args.config)


def _cmd_fleet(args: argparse.Namespace) -> int:
    import os

    from edgedet.fleet.ingest import BrokerSettings
    from edgedet.fleet.server import FleetOptions, parse_hostport, run

    host, port = parse_hostport(args.broker, 1883, "--broker")
    listen_host, listen_port = parse_hostport(args.listen, 8090, "--listen")
    broker = BrokerSettings(host, port, username=args.username, password=os.environ.get("EDGEDET_FLEET_PASSWORD"),
                            ca=args.ca, client_id=args.client_id)
    return run(FleetOptions(broker, args.prefix.strip("/"), Path(args.db), listen_host, listen_port))


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgedet.bench import main as bench_main  # lazy: measurement children import torch / ultralytics

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgedet", description="Edge video-stream detection daemon (YOLOv8 TorchScript)")
    ap.add_argument("--version", action="version", version=f"edgedet {__version__}")
    ap.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export an Ultralytics YOLOv8 .pt checkpoint to TorchScript, ONNX, OpenVINO "
                                      "or ncnn")
    p.add_argument("--weights", required=True, help="Ultralytics checkpoint (.pt)")
    p.add_argument("--imgsz", default="640", help="input size: N or H,W (multiples of the stride)")
    p.add_argument("--rect", default=None, metavar="W:H",
                   help="aspect-matched input for W:H frames, e.g. 16:9 -> 384x640 at --imgsz 640")
    p.add_argument("--half", action="store_true", help="alias of --precision fp16 (CUDA devices)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                   help="fp32 (default, the reference); bf16 (CPUs with AVX512_BF16/AMX: torchscript, openvino); "
                        "fp16 (CUDA, torchscript); int8 (openvino via NNCF, onnx via onnxruntime; needs --calib)")
    p.add_argument("--calib", default=None, metavar="SRC",
                   help="calibration frames: a folder of images, a video file or an rtsp:// URL")
    p.add_argument("--calib-frames", type=int, default=300, help="frames sampled evenly from --calib (default 300)")
    p.add_argument("--val", default=None, metavar="SRC",
                   help="held-out frames for the accuracy guard (default: frames of --calib not used to calibrate)")
    p.add_argument("--val-frames", type=int, default=60, help="held-out frames (default 60)")
    p.add_argument("--stream-seconds", type=float, default=60.0,
                   help="for a stream URL: spread the frames over this many seconds (default 60)")
    p.add_argument("--min-f1", type=float, default=0.95,
                   help="accuracy guard: detection F1 against fp32 below this fails the export (default 0.95)")
    p.add_argument("--force", action="store_true", help="write the model even when it fails the accuracy guard")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--check-image", default=None, help="real image for the traced-vs-eager check")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx", "openvino", "ncnn"],
                   help="torchscript (default), onnx (needs edgedet[onnx]), openvino (needs edgedet[openvino]) "
                        "or ncnn (needs edgedet[export,ncnn]: the pnnx converter and the ncnn runtime)")
    p.add_argument("-o", "--output", default=None,
                   help="output (default: WEIGHTS with .torchscript / .onnx, or WEIGHTS_openvino_model/ / "
                        "WEIGHTS_ncnn_model/)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("detect", help="run the detector on image files, one JSON line per image")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnxruntime", "openvino", "ncnn"],
                   help="auto: by the model path (.onnx -> onnxruntime, *_openvino_model/ or .xml -> openvino, "
                        "*_ncnn_model/ -> ncnn)")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--classes", nargs="*", default=None, help="labels or class ids to keep")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="the runtime's threads (default: the runtime's own choice)")
    p.add_argument("--half", action="store_true",
                   help="as model.half: fp16 on CUDA (TorchScript); ncnn: fp16 storage and arithmetic")
    p.add_argument("--save-annotated", default=None, metavar="DIR")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("info", help="print a model file's metadata: precision, calibration, agreement with fp32")
    p.add_argument("model", help="a .torchscript, .onnx, *_openvino_model/ (or its .xml) or *_ncnn_model/")
    p.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnxruntime", "openvino", "ncnn"])
    p.add_argument("--json", action="store_true", help="the whole metadata as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("tune", help="measure backend x precision x thread layout on this box; recommend a setup")
    from edgedet.tune.options import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("check-config", help="validate a config file and print it normalised (secrets masked)")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="override the config's log_level")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("fleet", help="one console over every node on the central MQTT broker (edgedet[fleet])")
    p.add_argument("--broker", required=True, metavar="HOST[:PORT]", help="the central broker (port 1883)")
    p.add_argument("--prefix", default="edgedet", help="the nodes' mqtt.topic_prefix (default edgedet)")
    p.add_argument("--db", default="/var/lib/edgedet/fleet.db", help="event history (SQLite)")
    p.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST[:PORT]", help="console address")
    p.add_argument("--username", default=None, help="broker user; password from $EDGEDET_FLEET_PASSWORD")
    p.add_argument("--ca", default=None, help="CA file: TLS to the broker")
    p.add_argument("--client-id", default="edgedet-fleet", help="MQTT client id (persistent session)")
    p.set_defaults(func=_cmd_fleet)

    # Options are parsed by edgedet.bench (see `edgedet bench --help`): pass everything through.
    p = sub.add_parser("bench", help="benchmark raw model vs pipeline vs Ultralytics, and live latency",
                       add_help=False, prefix_chars="+")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.func(args))
    except EdgedetError as exc:
        text = io.StringIO()
        code = report(exc, text)
        sys.stderr.write(scrub(text.getvalue()))  # no known secret in an error line either
        return code
    except KeyboardInterrupt:
        return 130
