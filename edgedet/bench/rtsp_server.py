#!/usr/bin/python3
"""Serve a looping JPEG sequence as a real-time H.264 RTSP stream (test and demo helper).

A script, never imported: it runs with the *system* python (needs PyGObject and GstRtspServer),
started by the bench's live row (``edgedet.bench.live``) and the tests' RTSP fixture:

    /usr/bin/python3 edgedet/bench/rtsp_server.py --port 8554 --frames .cache/demo/frames --fps 25
    -> READY rtsp://127.0.0.1:8554/cam

Extra mounts: ``--mount name=DIR`` serves DIR/%05d.jpg at ``/name``. The server binds to
127.0.0.1 only. ``--port 0`` lets the kernel pick a port. Once the server is attached it prints
one line ``READY <url> [<url> ...]`` (the ``--path`` mount first) and flushes stdout. SIGTERM and
SIGINT stop it cleanly (exit 0). Exit 2 on bad arguments, 1 when it cannot serve.
``--check`` only prints the H.264 encoder element it would use (exit 1 when there is none).
"""

from __future__ import annotations

import argparse
import signal
import sys
from fractions import Fraction
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

HOST = "127.0.0.1"

# Preferred first. Each entry: (element, options). All produce baseline-ish H.264 with short GOPs.
ENCODERS = (
    ("x264enc", "tune=zerolatency speed-preset=ultrafast key-int-max={gop} bframes=0"),
    ("openh264enc", "gop-size={gop} complexity=low rate-control=bitrate bitrate=4000000"),
    ("avenc_h264_omx", "gop-size={gop}"),
)


def pick_encoder(gop: int) -> str:
    for name, options in ENCODERS:
        if Gst.ElementFactory.find(name) is not None:
            return f"{name} {options.format(gop=gop)}"
    names = ", ".join(name for name, _ in ENCODERS)
    raise RuntimeError(f"no H.264 encoder element found (tried {names}); install gstreamer1.0-plugins-ugly")


def launch_line(frames: Path, fps: Fraction, encoder: str) -> str:
    location = str(frames / "%05d.jpg").replace('"', '\\"')
    rate = f"{fps.numerator}/{fps.denominator}"
    return (
        f'( multifilesrc location="{location}" loop=true caps="image/jpeg,framerate={rate}" '
        f"! jpegdec ! videoconvert ! video/x-raw,format=I420 ! {encoder} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def parse_mount(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    name = name.strip().strip("/")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (got {text!r})")
    return "/" + name, Path(folder)


def parse_fps(text: str) -> Fraction:
    try:
        fps = Fraction(text).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"expected a frame rate like 25 or 30000/1001 (got {text!r})"
        ) from None
    if fps <= 0:
        raise argparse.ArgumentTypeError(f"frame rate must be positive (got {text!r})")
    return fps


def check_frames(folder: Path) -> str | None:
    if not (folder / "00000.jpg").is_file():
        return f"{folder}: expected a JPEG sequence starting at 00000.jpg"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--frames", type=Path, help="folder with 00000.jpg, 00001.jpg, ...")
    parser.add_argument("--fps", type=parse_fps, default=Fraction(25), help="frame rate (default 25)")
    parser.add_argument("--path", default="/cam", help="mount point for --frames (default /cam)")
    parser.add_argument(
        "--mount",
        type=parse_mount,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve another JPEG sequence at /NAME (repeatable)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that GStreamer and an H.264 encoder are usable, print the encoder",
    )
    args = parser.parse_args(argv)

    if args.check:
        Gst.init(None)
        try:
            encoder = pick_encoder(gop=25)
        except RuntimeError as exc:
            print(f"rtsp_server: {exc}", file=sys.stderr)
            return 1
        print(encoder.split()[0])
        return 0
    if args.port is None:
        parser.error("--port is required")

    mounts: list[tuple[str, Path]] = []
    if args.frames is not None:
        mounts.append(("/" + args.path.strip("/"), args.frames))
    mounts += args.mount
    if not mounts:
        parser.error("give --frames DIR and/or --mount NAME=DIR")
    problems = [p for p in (check_frames(folder) for _, folder in mounts) if p]
    paths = [path for path, _ in mounts]
    if len(set(paths)) != len(paths):
        problems.append(f"duplicate mount points: {paths}")
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be 0..65535 (got {args.port})")
    if problems:
        parser.error("; ".join(problems))

    Gst.init(None)
    try:
        encoder = pick_encoder(gop=max(1, round(args.fps)))
    except RuntimeError as exc:
        print(f"rtsp_server: {exc}", file=sys.stderr)
        return 1

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))
    mount_points = server.get_mount_points()
    for path, folder in mounts:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(folder.resolve(), args.fps, encoder))
        factory.set_shared(True)
        mount_points.add_factory(path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on {HOST}:{args.port}", file=sys.stderr)
        return 1

    def stop(signum: int) -> bool:
        print(f"rtsp_server: {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
        loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, stop, signum)

    port = server.get_bound_port()
    urls = " ".join(f"rtsp://{HOST}:{port}{path}" for path, _ in mounts)
    print(f"rtsp_server: encoder {encoder.split()[0]}", file=sys.stderr, flush=True)
    print(f"READY {urls}", flush=True)
    try:
        loop.run()
    except KeyboardInterrupt:  # SIGINT before the GLib handler was installed
        pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
