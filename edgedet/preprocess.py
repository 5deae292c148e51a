"""Letterbox + normalise into a reused NCHW buffer, or letterbox only into a reused uint8 BGR
buffer for a model that normalises inside (pure numpy / OpenCV, no torch).

Semantics match Ultralytics' ``LetterBox`` for a static-shape exported model (``auto=False``,
``scaleup=True``, ``center=True``, pad value 114, ``cv2.INTER_LINEAR``): scale to fit the
model input keeping the aspect ratio, round each resized side with Python's ``round`` (at least
1 px), and split the padding with ``round(d/2 - 0.1)`` before and ``round(d/2 + 0.1)`` after.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgedet.errors import InputError

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Geometry of one letterbox: source (h, w) placed into the model input (h, w)."""

    src_h: int
    src_w: int
    dst_h: int
    dst_w: int
    new_h: int  # resized image height inside the input
    new_w: int
    top: int
    left: int

    @property
    def gain_x(self) -> float:
        return self.new_w / self.src_w

    @property
    def gain_y(self) -> float:
        return self.new_h / self.src_h


def letterbox_geometry(src_h: int, src_w: int, dst_h: int, dst_w: int) -> Letterbox:
    """Where an ``src_h`` x ``src_w`` image lands inside a ``dst_h`` x ``dst_w`` model input."""
    if src_h <= 0 or src_w <= 0:
        raise InputError(f"image has an empty shape {src_h}x{src_w}")
    r = min(dst_h / src_h, dst_w / src_w)
    new_w = max(round(src_w * r), 1)
    new_h = max(round(src_h * r), 1)
    dw = (dst_w - new_w) / 2
    dh = (dst_h - new_h) / 2
    return Letterbox(src_h, src_w, dst_h, dst_w, new_h, new_w, top=round(dh - 0.1), left=round(dw - 0.1))


def as_bgr(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an image and return it as H x W x 3 uint8 BGR (grayscale and BGRA are converted)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name}: expected a numpy array (got {type(image).__name__})")
    if image.size == 0:
        raise InputError(f"{name}: image is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise InputError(f"{name}: expected a uint8 image (got {image.dtype})")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 3:
            return image
        if channels == 1:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if channels == 4:
            return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise InputError(f"{name}: expected H x W, H x W x 1, H x W x 3 or H x W x 4 (got shape {image.shape})")


class Preprocessor:
    """Letterboxes frames into buffers it owns and reuses (one instance per worker thread).

    ``__call__(image, slot)`` returns ``(tensor, geometry)``; ``tensor`` is the 1 x 3 x H x W view of
    batch slot ``slot`` (float32 or float16), valid until that slot is written again. ``batch`` is
    the whole ``batch x 3 x H x W`` view.

    ``layout``: ``"nchw"`` (contiguous planes, what ONNX Runtime / OpenVINO / CUDA uploads take) or
    ``"nhwc"``: the same NCHW view over channels-last memory, which a channels_last TorchScript model
    on a CPU consumes without a copy, and which is filled 4-5x faster (two contiguous passes instead
    of one strided one). Pass ``buffer`` (NCHW, contiguous) to write into memory someone else owns,
    e.g. pinned host memory for CUDA uploads.

    ``"bgr_u8"``: the letterboxed uint8 BGR pixels themselves, ``batch x H x W x 3`` (``tensor`` is
    ``1 x H x W x 3``), for a model that converts to RGB, scales by 1/255 and transposes inside (an
    OpenVINO model with its preprocessing compiled in): one resize per frame, nothing else.
    """

    def __init__(self, input_h: int, input_w: int, dtype: type[np.floating] = np.float32, batch: int = 1,
                 buffer: np.ndarray | None = None, layout: str = "nchw") -> None:
        if layout not in ("nchw", "nhwc", "bgr_u8"):
            raise ValueError(f"layout must be 'nchw', 'nhwc' or 'bgr_u8' (got {layout!r})")
        self.input_h = input_h
        self.input_w = input_w
        self._nhwc: np.ndarray | None = None
        self._last_geometry: list[Letterbox | None] = [None]
        if layout == "bgr_u8":
            if buffer is not None and buffer.shape != (batch, input_h, input_w, 3):
                raise ValueError(f"buffer shape {buffer.shape} != {(batch, input_h, input_w, 3)}")
            self.batch = buffer if buffer is not None else np.full((batch, input_h, input_w, 3), PAD_VALUE, np.uint8)
            self._canvases = list(self.batch)  # the image is resized straight into its batch slot
            self._last_geometry = [None] * batch
            self._float = False
            return
        self._float = True
        self._canvas = np.full((input_h, input_w, 3), PAD_VALUE, dtype=np.uint8)
        self._canvases = [self._canvas]
        self._rgb = np.empty_like(self._canvas)
        if buffer is not None:
            if buffer.shape != (batch, 3, input_h, input_w):
                raise ValueError(f"buffer shape {buffer.shape} != {(batch, 3, input_h, input_w)}")
            self.batch = buffer
        elif layout == "nhwc":
            self._nhwc = np.empty((batch, input_h, input_w, 3), dtype=dtype)
            self.batch = self._nhwc.transpose(0, 3, 1, 2)
        else:
            self.batch = np.empty((batch, 3, input_h, input_w), dtype=dtype)
        self._scale = np.asarray(255, dtype=self.batch.dtype)

    def __call__(self, image: np.ndarray, slot: int = 0) -> tuple[np.ndarray, Letterbox]:
        bgr = as_bgr(image)
        h, w = bgr.shape[:2]
        which = 0 if self._float else slot  # float layouts share one canvas; bgr_u8 has one per slot
        canvas = self._canvases[which]
        geo = self._last_geometry[which]
        if geo is None or geo.src_h != h or geo.src_w != w:
            geo = letterbox_geometry(h, w, self.input_h, self.input_w)
            canvas.fill(PAD_VALUE)  # padding only changes with the geometry
            self._last_geometry[which] = geo
        roi = canvas[geo.top : geo.top + geo.new_h, geo.left : geo.left + geo.new_w]
        if (geo.new_h, geo.new_w) == (h, w):
            roi[...] = bgr
        else:
            resized = cv2.resize(bgr, (geo.new_w, geo.new_h), dst=roi, interpolation=cv2.INTER_LINEAR)
            if resized is not roi and not np.shares_memory(resized, roi):
                roi[...] = resized  # OpenCV could not write in place (should not happen)
        if not self._float:
            return self.batch[slot : slot + 1], geo
        if self._nhwc is not None:
            cv2.cvtColor(self._canvas, cv2.COLOR_BGR2RGB, dst=self._rgb)
            np.divide(self._rgb, self._scale, out=self._nhwc[slot], casting="unsafe")
        else:  # BGR -> RGB, HWC -> CHW, /255 in one strided pass
            np.divide(self._canvas[:, :, ::-1].transpose(2, 0, 1), self._scale, out=self.batch[slot],
                      casting="unsafe")
        return self.batch[slot : slot + 1], geo


def to_bgr_u8(batch: np.ndarray) -> np.ndarray:
    """A float NCHW RGB /255 batch back to the uint8 BGR NHWC pixels it was made from (exact for
    what :class:`Preprocessor` writes: every value is k/255), for a ``bgr_u8`` model."""
    pixels = np.rint(np.asarray(batch, dtype=np.float32) * 255.0).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels[:, ::-1].transpose(0, 2, 3, 1))
