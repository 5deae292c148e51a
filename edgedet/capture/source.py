"""Frame sources: the ``FrameSource`` protocol the capture thread reads, and ``OpenCvSource``
(RTSP / HTTP / file through FFmpeg, ``/dev/videoN`` through V4L2) with bounded opens and reads."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edgedet.errors import CaptureError, one_line
from edgedet.redact import mask_url

log = logging.getLogger("edgedet.capture")

SourceKind = Literal["rtsp", "http", "file", "device"]

# OPENCV_FFMPEG_CAPTURE_OPTIONS is process-global and read by OpenCV when a capture opens. Opens
# that need the same value share it and run at once; only an open that needs another value (another
# rtsp transport) waits until the opens in flight are done. See ``FfmpegOptionsGate``.
#
# OpenCV itself serialises FFmpeg opens (a static mutex in cap_ffmpeg_impl.hpp, held for the whole
# avformat_open_input: measured 1.5 s of wait behind a silent peer on OpenCV 5.0). So before an RTSP
# open, ``probe()`` asks the server for OPTIONS from Python, with the open timeout: a dead camera
# (a host or a server that accepts and never answers) fails there and never holds OpenCV's mutex.
_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

_MAX_SANE_FPS = 1000.0  # some RTSP servers report the 90 kHz clock as fps

# FFmpeg and OpenCV print to stderr on every failed open and every corrupt frame ("moov atom not
# found", "error while decoding MB ..."): with reconnects, the same lines forever. Capture counts
# those and logs state changes instead. An operator's own setting of these variables wins.
_FFMPEG_LOGLEVEL_ENV = "OPENCV_FFMPEG_LOGLEVEL"  # read once, when OpenCV's FFmpeg backend starts
_AV_LOG_FATAL = 8


class FrameSource(Protocol):
    """What ``CaptureWorker`` reads from. ``grab()`` must return within a bounded time."""

    @property
    def fps(self) -> float | None:
        """Nominal frame rate once open (None when unknown)."""
        ...

    @property
    def is_file(self) -> bool:
        """True for a file: ``grab() == False`` then means end of file, not a failure."""
        ...

    @property
    def read_timeout_s(self) -> float | None:
        """How long one ``grab()`` may wait before it gives up (None: no own timeout)."""
        ...

    def open(self) -> None:
        """Open the source; raise ``CaptureError`` with a one-line reason on failure."""
        ...

    def grab(self) -> bool:
        """Read the next frame without decoding it; False on EOF / error / timeout."""
        ...

    def retrieve(self) -> np.ndarray | None:
        """Decode the last grabbed frame (BGR); None when it cannot be decoded."""
        ...

    def close(self) -> None: ...


class OpenCvSource:
    """OpenCV capture: FFmpeg for rtsp/http/file, V4L2 for ``/dev/videoN`` or an int index.

    FFmpeg opens and reads are bounded by ``open_timeout_s`` / ``read_timeout_s``
    (``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` -- both verified to
    interrupt a silent peer on OpenCV 5.0). ``width``/``height``/``fourcc`` apply to V4L2.
    """

    def __init__(
        self,
        url: str | int,
        kind: SourceKind,
        transport: Literal["tcp", "udp"] = "tcp",
        width: int | None = None,
        height: int | None = None,
        fourcc: str | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        display_url: str | None = None,
    ) -> None:
        if kind not in ("rtsp", "http", "file", "device"):
            raise ValueError(f"source kind must be rtsp, http, file or device (got {kind!r})")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp' (got {transport!r})")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"fourcc must have 4 characters (got {fourcc!r})")
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError(
                f"timeouts must be > 0 (got open {open_timeout_s}, read {read_timeout_s})"
            )
        self.url = url
        self.kind = kind
        self.transport = transport
        self.width = width
        self.height = height
        self.fourcc = fourcc
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.display_url = display_url if display_url is not None else mask_url(url)
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    def open(self) -> None:
        self.close()
        quiet_native_logs()
        if self.kind == "device":
            cap = self._open_device()
        else:
            cap = self._open_ffmpeg()
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._fps = fps if math.isfinite(fps) and 0.0 < fps <= _MAX_SANE_FPS else None
        self._cap = cap

    def _open_ffmpeg(self) -> cv2.VideoCapture:
        if self.kind == "file" and not Path(str(self.url)).is_file():
            raise CaptureError(f"cannot open {self.display_url}: no such file")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
        ]  # fmt: skip
        started = time.monotonic()
        if self.kind == "rtsp" and not probe(str(self.url), self.open_timeout_s):
            raise CaptureError(f"cannot open {self.display_url}: no answer within {self.open_timeout_s:g} s")
        left_ms = int(max(0.1, self.open_timeout_s - (time.monotonic() - started)) * 1000)
        params[1] = left_ms  # the probe and the open share the open timeout
        if self.kind == "rtsp":
            with FFMPEG_OPTIONS.using(lambda base: _with_rtsp_transport(base, self.transport)):
                cap = cv2.VideoCapture(str(self.url), cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(str(self.url), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            elapsed = time.monotonic() - started
            if elapsed >= self.open_timeout_s * 0.95:
                reason = f"no answer within {self.open_timeout_s:g} s"
            elif self.kind == "file":
                reason = "not a readable video file"
            else:
                reason = "FFmpeg could not open the stream (check host, path, credentials, codec)"
            raise CaptureError(f"cannot open {self.display_url}: {reason}")
        return cap

    def _open_device(self) -> cv2.VideoCapture:
        target: str | int = self.url
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"cannot open V4L2 device {self.display_url}: missing, busy or not a camera")
        if self.fourcc is not None:  # before the size: drivers pick sizes per pixel format
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        if self.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000))  # ignored if unsupported
        actual = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if actual != (self.width or actual[0], self.height or actual[1]):
            log.warning(
                "device %s: asked for %sx%s, driver gave %dx%d",
                self.display_url, self.width, self.height, actual[0], actual[1],
            )
        return cap

    def grab(self) -> bool:
        if self._cap is None:
            return False
        try:
            return bool(self._cap.grab())
        except cv2.error as exc:
            raise CaptureError(f"read from {self.display_url} failed: {one_line(exc)}") from exc

    def retrieve(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        try:
            ok, image = self._cap.retrieve()
        except cv2.error:
            return None
        if not ok or image is None or image.size == 0:
            return None
        return image

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


def probe(url: str, timeout_s: float) -> bool:
    """False when the camera's server cannot answer within ``timeout_s``: the TCP connect times out, or
    (plain ``rtsp://``) it accepts but sends nothing back to an ``OPTIONS`` request. True otherwise,
    also for a refused or reset connection or a URL this cannot parse: OpenCV then fails fast itself
    with its own reason. ``rtsps://`` gets the connect only (a request would need TLS). HTTP sources
    are not probed: an extra connection starts a stream, and some cameras allow only one."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return True
    if not host or port is None:
        return True
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if parts.scheme.lower() != "rtsp":
                return True
            target = urlunsplit(("rtsp", parts.netloc.rpartition("@")[2], parts.path or "/", parts.query, ""))
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: edgedet\r\n\r\n".encode())
            sock.recv(1)
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


class FfmpegOptionsGate:
    """Shares the process-wide ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` between concurrent opens.

    ``with gate.using(make): open...``: ``make(operator's value)`` is the value this open needs. Opens
    needing the value already in force join the ones in flight at once; an open needing another value
    waits until none is in flight, and while it waits new opens of the current value queue behind it
    (so it cannot starve). The variable is set while opens are in flight and restored after the last.
    """

    def __init__(self, env: str = _FFMPEG_ENV) -> None:
        self.env = env
        self._cond = threading.Condition()
        self._inflight = 0
        self._value: str | None = None  # the value in force while opens are in flight
        self._base: str | None = None  # the operator's value, restored after the last open
        self._queued: dict[str, int] = {}  # value -> opens waiting for it

    @contextmanager
    def using(self, make: Callable[[str | None], str]) -> Iterator[None]:
        with self._cond:
            base = os.environ.get(self.env) if self._inflight == 0 else self._base
            value = make(base)
            self._queued[value] = self._queued.get(value, 0) + 1
            try:
                while self._inflight and (
                    self._value != value or any(n for v, n in self._queued.items() if v != value)
                ):
                    self._cond.wait()
            finally:
                self._queued[value] -= 1
                if not self._queued[value]:
                    del self._queued[value]
            if self._inflight == 0:
                self._base = os.environ.get(self.env)
                self._value = make(self._base)
                os.environ[self.env] = self._value
            self._inflight += 1
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0:
                    if self._base is None:
                        os.environ.pop(self.env, None)
                    else:
                        os.environ[self.env] = self._base
                    self._value = None
                self._cond.notify_all()


FFMPEG_OPTIONS = FfmpegOptionsGate()


@cache
def quiet_native_logs() -> None:
    """Keep FFmpeg to fatal messages and OpenCV to errors, unless the environment says otherwise
    (``OPENCV_FFMPEG_LOGLEVEL`` / ``OPENCV_FFMPEG_DEBUG`` / ``OPENCV_LOG_LEVEL``). Call before the
    first capture opens; later calls do nothing."""
    if "OPENCV_FFMPEG_DEBUG" not in os.environ:
        os.environ.setdefault(_FFMPEG_LOGLEVEL_ENV, str(_AV_LOG_FATAL))
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _with_rtsp_transport(options: str | None, transport: str) -> str:
    """FFmpeg capture options (``key;value|key;value``) with ``rtsp_transport`` set."""
    kept = [o for o in (options or "").split("|") if o and not o.startswith("rtsp_transport;")]
    return "|".join([*kept, f"rtsp_transport;{transport}"])
