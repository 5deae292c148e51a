"""``edgedet tune`` flags (argparse only: imported when the command line is built)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="the daemon's config: its model and cameras")
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="another candidate model file (repeatable); models beside model.path exported from the "
                        "same checkpoint are candidates too")
    p.add_argument("--video", default=None,
                   help="clip for the pipeline rows (default: the config's first file camera)")
    p.add_argument("--weights", default=None, metavar="W.pt",
                   help="the checkpoint model.path was exported from: aspect-matched (rect) twins of the candidates "
                        "that the cameras' frame aspect calls for are exported with it (default: print the commands)")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="where --weights exports go, also searched for candidates (default: model.path's folder)")
    p.add_argument("--frames", type=int, default=60, help="clip frames per pipeline measurement (default 60)")
    p.add_argument("--raw-iters", type=int, default=20, help="forwards per raw measurement (default 20)")
    p.add_argument("--layouts", default=None, metavar="WxT,...",
                   help="worker x thread layouts to try, e.g. 1x2,2x1 (default: 1xN, Nx1 and 2x(N/2) for N cores)")
    p.add_argument("--min-f1", type=float, default=0.95,
                   help="candidates below this F1 against fp32 (from their export) are never recommended")
    p.add_argument("--allow-unchecked", action="store_true",
                   help="also recommend reduced-precision models without agreement figures (other tools' exports)")
    p.add_argument("--write", action="store_true",
                   help="write the recommended model:/workers: settings into the config, keeping its comments")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the measurements as JSON")
