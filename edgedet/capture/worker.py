"""The per-camera capture thread (sources: ``source.py``).

``CaptureWorker`` opens a ``FrameSource``, reads frames into the camera's queue and, on any
failure (open error, read error or timeout, stall, unexpected exception), closes it, marks
the camera down and reconnects with capped exponential backoff and full jitter -- forever,
until the shared stop Event is set. One camera's trouble never affects another. A camera that
keeps delivering the same image (a frozen encoder) is reported, not reconnected.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from edgedet.capture.source import FrameSource
from edgedet.errors import CaptureError, one_line
from edgedet.framequeue import CameraQueue
from edgedet.heartbeat import Heartbeat
from edgedet.metrics import Metrics
from edgedet.motion import MotionGate, MotionSettings
from edgedet.types import Frame

log = logging.getLogger("edgedet.capture")  # a stable stage name: journald filters and docs use it

_DEFAULT_FILE_FPS = 25.0
_DUE_EPSILON_S = 1e-3  # float slack when comparing a frame time with the fps_limit due time
_TIMEOUT_SLACK = 0.9  # a failed grab that waited this share of a timeout timed out

# The backoff resets only once a session has been stable: at least STABLE_FRAMES frames delivered AND
# STABLE_S seconds since its first frame. A camera that gives one frame and drops (a flaky encoder, a
# server that accepts and closes) keeps backing off instead of reconnecting every ~0.5 s.
STABLE_FRAMES = 10
STABLE_S = 10.0

# Frozen-camera check: a grey thumbnail of each decoded frame (INTER_AREA: a mean over ~40x40
# pixel blocks at 1280x720, so re-encoding a frozen image moves it by <= 2 grey levels, measured
# with x264) against the first frame of the current still run; any cell moving by more than
# FROZEN_MAX_DIFF starts a new run. About 0.2 ms per 1280x720 frame.
FROZEN_THUMB_SIZE = (32, 18)
FROZEN_MAX_DIFF = 3


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The small grey image the frozen-camera check compares (``FROZEN_THUMB_SIZE``, uint8)."""
    small = cv2.resize(image, FROZEN_THUMB_SIZE, interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    elif small.ndim == 3:
        small = small[:, :, 0]
    return np.ascontiguousarray(small, dtype=np.uint8)


class _Failure(CaptureError):
    """A failed capture session; ``kind`` is the ``capture_errors`` label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class CaptureWorker(threading.Thread):
    """Reads one camera into its ``CameraQueue`` until ``stop`` is set (or a file ends).

    * ``seq`` rises by one per delivered frame, across reconnects and file loops.
    * Failure (open, read, stall, internal bug) -> close, mark down once, reconnect after
      ``uniform(0, min(backoff_max, backoff_initial * 2**(n-1)))`` seconds (full jitter;
      ``n`` = failures since the last stable session: ``STABLE_FRAMES`` frames and ``STABLE_S``
      seconds; the camera is reported up at its first frame all the same).
    * ``fps_limit``: every frame is grabbed, only due ones are decoded; the others count
      as ``frames_dropped{reason="fps_limit"}``. Due times advance by exactly 1/fps_limit,
      so the average rate is right whatever the source rate. Files are sampled on media
      time (frame index / file fps), live sources on ``clock()``.
    * Files: ``realtime`` paces grabs at the file's fps; ``loop`` reopens at EOF; otherwise
      EOF closes the queue and the thread ends (the camera is ended, not down).
    * Stall: no frame for ``stall_timeout_s`` (a grab that returns late, or a live grab that
      fails after waiting out the source's read timeout) counts as ``capture_errors{kind=
      "stall"}``; a grab that fails at once (connection closed) as ``read``. Either reconnects:
      an FFmpeg capture never recovers after a read timeout, so a new one is always opened.
    * Frozen: when every decoded frame for ``frozen_after_s`` matches the first one of the run
      (``thumbnail()`` within ``FROZEN_MAX_DIFF`` grey levels), ``camera_frozen`` goes to 1 and
      a WARNING is logged; the first frame that differs sets it back (WARNING again). Frames
      keep flowing and nothing reconnects. The state outlives a reconnect (same picture after
      it: still frozen, no new line); otherwise a new session starts a new still run. ``None``
      disables the check.
    * Motion (``motion`` settings, ``detect.mode: motion``): a ``MotionGate`` decides per decoded frame
      whether it goes to the queue; the others count as ``inference_skipped{reason}`` and leave a gap
      in ``seq``. ``configure()`` changes ``fps_limit`` and the gate in place (profiles).
    """

    def __init__(
        self,
        camera: str,
        source_factory: Callable[[], FrameSource],
        queue: CameraQueue,
        stop: threading.Event,
        metrics: Metrics,
        *,
        fps_limit: float | None = None,
        loop: bool = False,
        realtime: bool = True,
        stall_timeout_s: float = 10.0,
        frozen_after_s: float | None = 60.0,
        motion: MotionSettings | None = None,
        on_state: Callable[[str, bool], None] | None = None,
        max_block_s: float = 10.0,
        stable_frames: int = STABLE_FRAMES,
        stable_s: float = STABLE_S,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name=f"capture:{camera}", daemon=True)
        if fps_limit is not None and fps_limit <= 0:
            raise ValueError(f"fps_limit must be > 0 or None (got {fps_limit})")
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0 (got {stall_timeout_s})")
        if frozen_after_s is not None and not frozen_after_s > 0:
            raise ValueError(f"frozen_after_s must be > 0 or None (got {frozen_after_s})")
        if stable_frames < 1 or stable_s < 0:
            raise ValueError(f"need stable_frames >= 1 and stable_s >= 0 (got {stable_frames}, {stable_s})")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(
                f"need 0 < backoff_initial <= backoff_max (got {backoff_initial}, {backoff_max})"
            )
        self.camera = camera
        self._source_factory = source_factory
        self._queue = queue
        self._stop_event = stop
        self._fps_limit = fps_limit
        self._loop = loop
        self._realtime = realtime
        self._stall_timeout_s = stall_timeout_s
        self._frozen_after_s = frozen_after_s
        self._on_state = on_state
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._wait = wait if wait is not None else stop.wait
        self._rng = rng if rng is not None else random.Random()
        self._stable_frames = stable_frames
        self._stable_s = stable_s
        self._max_block_s = max_block_s  # the longest a source's open or grab may block
        self.heartbeat = Heartbeat(clock)  # read by the systemd watchdog (health.Liveness)

        self._seq = 0
        self._up: bool | None = None  # None until the first success or failure
        self._failures = 0  # consecutive failed sessions
        self._media_frames = 0  # frames grabbed from a file, across loops (media clock)
        self._next_due: float | None = None  # fps_limit sampling
        self._decode_failing_since: float | None = None
        self._still_ref: np.ndarray | None = None  # thumbnail that started the current still run
        self._still_since = 0.0
        self._frozen = False
        self._last_error = ""  # reason of the last traceback logged (a repeated bug logs once)

        self._metrics = metrics
        metrics.init_camera(camera)
        self._m_captured = metrics.frames_captured.labels(camera=camera)
        self._m_up = metrics.camera_up.labels(camera=camera)
        self._m_fps_drop = metrics.frames_dropped.labels(camera=camera, reason="fps_limit")
        self._m_reconnects = metrics.camera_reconnects.labels(camera=camera)
        self._m_frozen = metrics.camera_frozen.labels(camera=camera)
        self.gate: MotionGate | None = None  # detect.mode motion (edgedet/motion.py); None: every frame
        self._last_sent: float | None = None
        self.latest: np.ndarray | None = None  # the newest decoded frame (read by the profiles' IR test)
        self.configure(fps_limit, motion)

    # ------------------------------------------------------------------ thread body

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            # Only a bug in this loop itself gets here (sessions catch everything).
            log.critical("capture thread for camera %s crashed; stopping", self.camera, exc_info=True)
            self._stop_event.set()

    def _run(self) -> None:
        while not self._stop_event.is_set():
            self.heartbeat.beat()
            try:
                outcome = self._session()
            except Exception as exc:  # noqa: BLE001 - a camera bug must never kill the thread
                if self._stop_event.is_set():
                    return  # a read cut short by shutdown is not a camera failure
                if isinstance(exc, _Failure):
                    self._failed(exc.kind, str(exc), exc_info=False)
                elif isinstance(exc, CaptureError):  # from the source's grab/retrieve
                    self._failed("read", str(exc), exc_info=False)
                else:  # a bug: log the traceback, but keep this camera (and the others) going
                    reason = f"unexpected {type(exc).__name__}: {one_line(exc)}"
                    self._failed("internal", reason, exc_info=True)
            else:
                if outcome == "stopped":
                    return
                if outcome == "ended":
                    self._queue.close()
                    self._m_up.set(0)
                    self._m_frozen.set(0)  # an ended file is neither up nor frozen
                    log.info("camera %s: end of file (%d frames delivered in all)", self.camera, self._seq)
                    return
                continue  # "loop": reopen the file straight away
            # failed: back off, then reconnect
            cap = min(self._backoff_max, self._backoff_initial * 2 ** (self._failures - 1))
            delay = self._rng.uniform(0.0, cap)
            self.heartbeat.beat(delay)
            if self._wait(delay) or self._stop_event.is_set():
                return
            self._m_reconnects.inc()

    def _session(self) -> str:
        """Open a source and read it. Returns "stopped", "ended" or "loop"; raises on failure."""
        source = self._source_factory()
        try:
            try:
                self.heartbeat.beat(self._max_block_s)
                source.open()
            except _Failure:
                raise
            except CaptureError as exc:  # the source's one-line reason names the URL
                raise _Failure("open", str(exc)) from exc
            return self._read(source)
        finally:
            try:
                source.close()
            except Exception:
                log.debug("camera %s: error closing source", self.camera, exc_info=True)

    def _read(self, source: FrameSource) -> str:
        clock, stall = self._clock, self._stall_timeout_s
        is_file = source.is_file
        fps = source.fps
        pace = is_file and self._realtime
        period = 1.0 / (fps or _DEFAULT_FILE_FPS)
        if pace and fps is None:
            log.warning("camera %s: file has no frame rate; pacing at %g fps", self.camera, _DEFAULT_FILE_FPS)
        anchor = clock()
        grabbed = 0  # frames grabbed in this session
        delivered = 0
        last_progress = clock()
        first_frame_t = last_progress

        while not self._stop_event.is_set():
            if pace:
                delay = anchor + grabbed * period - clock()
                if delay > 0:
                    self.heartbeat.beat(delay)
                    if self._wait(delay):
                        return "stopped"
                elif delay < -1.0:  # fell far behind (slow decode): don't burst to catch up
                    anchor = clock() - grabbed * period
                last_progress = clock()

            self.heartbeat.beat(self._max_block_s)
            if not source.grab():
                if is_file:
                    if grabbed == 0 and self._loop:
                        raise _Failure("read", f"camera {self.camera}: file gave no frames")
                    return "loop" if self._loop else "ended"
                raise self._read_failure(source, clock() - last_progress)
            now = clock()
            t_mono_ns, t_wall = time.monotonic_ns(), time.time()
            if now - last_progress > stall:
                raise _Failure("stall", f"camera {self.camera}: no frame for {now - last_progress:.1f} s")
            last_progress = now
            grabbed += 1

            if is_file and fps is not None:
                media_t = self._media_frames / fps
                self._media_frames += 1
            else:
                media_t = now
            limit_period = 1.0 / self._fps_limit if self._fps_limit else None  # configure() may change it
            if limit_period is not None and not self._due(media_t, limit_period):
                self._m_fps_drop.inc()
                continue

            image = source.retrieve()
            if image is None:
                self._count_error("decode")
                now = clock()
                if self._decode_failing_since is None:
                    self._decode_failing_since = now  # kept across file loops
                elif now - self._decode_failing_since > stall:
                    raise _Failure(
                        "stall", f"camera {self.camera}: every frame failed to decode for {stall:g} s"
                    )
                continue
            self._decode_failing_since = None
            if self._frozen_after_s is not None:
                self._check_frozen(image, now)

            frame = Frame(self.camera, self._seq, t_mono_ns, t_wall, image)
            self._seq += 1
            delivered += 1
            self._m_captured.inc()
            if delivered == 1:
                first_frame_t = now
                self._became_up(source, image)
            if self._failures and delivered >= self._stable_frames and now - first_frame_t >= self._stable_s:
                self._failures = 0  # a stable session: the next failure starts the backoff afresh
                self._last_error = ""
            if not self._send(image, media_t):
                continue
            if not self._queue.put(frame):
                return "stopped"  # queue closed or stop set
            last_progress = clock()  # time blocked in a back-pressured put is not a stall
        return "stopped"

    def configure(self, fps_limit: float | None, motion: MotionSettings | None) -> None:
        """Change ``fps_limit`` and the motion gate while running (a profile switch, from another thread):
        the next frame uses them. A gate keeps its background when only its settings change."""
        if fps_limit is not None and fps_limit <= 0:
            raise ValueError(f"fps_limit must be > 0 or None (got {fps_limit})")
        self._fps_limit = fps_limit
        if motion is None:
            self.gate = None
        elif self.gate is None:
            self.gate = MotionGate(motion)
        else:
            self.gate.settings = motion

    def _send(self, image: np.ndarray, t: float) -> bool:
        """Whether this decoded frame goes to inference (the motion gate); counts the skipped ones."""
        self.latest = image
        gate = self.gate
        if gate is None:
            sent = True
        else:
            decision = gate.decide(image, t)
            self._metrics.motion_fraction.labels(camera=self.camera).set(decision.motion)
            sent = decision.infer
            if not sent:
                self._metrics.inference_skipped.labels(camera=self.camera, reason=decision.reason).inc()
        if sent:
            if self._last_sent is not None and t > self._last_sent:
                self._metrics.inference_interval.labels(camera=self.camera).set(t - self._last_sent)
            self._last_sent = t
        return sent

    def _read_failure(self, source: FrameSource, silent_s: float) -> _Failure:
        """The failure for a live grab that returned False after ``silent_s`` without a frame:
        a stall when it waited out the stall timeout or the source's read timeout."""
        timeout = min(self._stall_timeout_s, source.read_timeout_s or math.inf)
        if silent_s >= timeout * _TIMEOUT_SLACK:
            return _Failure("stall", f"camera {self.camera}: no frame for {silent_s:.1f} s (read timed out)")
        return _Failure("read", f"camera {self.camera}: stream ended (read failed after {silent_s:.1f} s)")

    def _due(self, t: float, period: float) -> bool:
        """fps_limit sampling: True when the frame at time ``t`` should be decoded."""
        due = self._next_due
        if due is None or t - due > period:  # first frame, or a gap: restart the schedule
            self._next_due = t + period
            return True
        if t + _DUE_EPSILON_S >= due:
            self._next_due = due + period  # exact increments keep the average rate right
            return True
        return False

    # ------------------------------------------------------------------ state

    def _became_up(self, source: FrameSource, image: np.ndarray) -> None:
        self._m_up.set(1)
        if self._up is not True:
            self._up = True
            log.info(
                "camera %s up: %dx%d%s",
                self.camera, image.shape[1], image.shape[0],
                f" @ {source.fps:g} fps" if source.fps else "",
            )
            self._notify(True)

    def _failed(self, kind: str, reason: str, *, exc_info: bool) -> None:
        self._failures += 1
        self._count_error(kind)
        self._m_up.set(0)
        self._next_due = None
        self._decode_failing_since = None
        if not self._frozen:
            self._still_ref = None  # a new session starts a new still run (a frozen one goes on)
        if self._up is not False:
            self._up = False
            log.warning("camera %s down: %s; reconnecting with backoff", self.camera, reason)
            self._notify(False)
        else:
            log.debug("camera %s still down: %s", self.camera, reason)
        if exc_info and reason != self._last_error:  # a traceback per distinct bug, not per retry
            self._last_error = reason
            log.error("camera %s: unexpected error in capture", self.camera, exc_info=True)

    def _check_frozen(self, image: np.ndarray, now: float) -> None:
        thumb = thumbnail(image)
        ref = self._still_ref
        if ref is None or ref.shape != thumb.shape or int(cv2.absdiff(thumb, ref).max()) > FROZEN_MAX_DIFF:
            self._still_ref, self._still_since = thumb, now
            if self._frozen:
                self._frozen = False
                self._m_frozen.set(0)
                log.warning("camera %s no longer frozen", self.camera)
            return
        still_s = now - self._still_since
        if not self._frozen and self._frozen_after_s is not None and still_s >= self._frozen_after_s:
            self._frozen = True
            self._m_frozen.set(1)
            log.warning("camera %s frozen: identical frames for %.0f s", self.camera, still_s)

    def _notify(self, up: bool) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(self.camera, up)
        except Exception:
            log.exception("camera %s: on_state callback failed", self.camera)

    def _count_error(self, kind: str) -> None:
        self._metrics.capture_errors.labels(camera=self.camera, kind=kind).inc()
