"""Event snapshots: JPEG files under ``<state_dir>/snapshots/<camera>/<event id>-<n>.jpg``.

The frame with the event's best detection, annotated (or cropped to the box); retention by count
and size, oldest deleted first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edgedet.config import SnapshotConfig
from edgedet.draw import annotate
from edgedet.preprocess import as_bgr
from edgedet.types import Detection

__all__ = ["JPEG_QUALITY", "SnapshotStore"]

log = logging.getLogger(__name__)

JPEG_QUALITY = 85


class SnapshotStore:
    """JPEG snapshots under ``directory/<camera>/<event id>-<n>.jpg``, oldest deleted first.

    At most ``keep`` files and ``max_mb`` MiB in all (the newest file is always kept), across every
    camera: the daemon builds one store and a config reload re-limits it (``configure``). Files are
    written atomically (temporary file + rename); a failed write (full or read-only disk) removes its
    temporary file, logs one WARNING until a write works again (one INFO then), and the caller still
    gets the JPEG to publish. Every later save tries the disk again. Safe to share between trackers
    and threads.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int, max_mb: float, crop: bool = False,
                 quality: int = JPEG_QUALITY) -> None:
        if keep < 1:
            raise ValueError(f"SnapshotStore.keep must be >= 1 (got {keep})")
        if max_mb <= 0:
            raise ValueError(f"SnapshotStore.max_mb must be > 0 (got {max_mb})")
        self.directory = Path(directory)
        self.keep = keep
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.crop = crop
        self.quality = quality
        self._lock = threading.Lock()
        self._files: deque[tuple[Path, int]] = deque()
        self._bytes = 0
        self._failing = False
        self._scan()

    @classmethod
    def from_config(cls, snapshots: SnapshotConfig, state_dir: str | os.PathLike[str]) -> SnapshotStore | None:
        """The store of the ``events.snapshots`` section (under ``<state_dir>/snapshots``), or None
        when snapshots are disabled."""
        if not snapshots.enabled:
            return None
        return cls(Path(state_dir) / "snapshots", snapshots.keep, snapshots.max_mb, snapshots.crop)

    def configure(self, keep: int, max_mb: float, crop: bool) -> None:
        """New limits (a config reload): applied at once, the oldest files deleted first."""
        if keep < 1 or max_mb <= 0:
            raise ValueError(f"SnapshotStore needs keep >= 1 and max_mb > 0 (got {keep}, {max_mb})")
        with self._lock:
            self.keep, self.max_bytes, self.crop = keep, int(max_mb * 1024 * 1024), crop
            self._prune()

    def files(self) -> list[Path]:
        """The retained snapshot files, oldest first."""
        with self._lock:
            return [path for path, _ in self._files]

    def save(self, camera: str, event_id: str, n: int, image: np.ndarray,
             det: Detection) -> tuple[str | None, bytes]:
        """Encode and store one snapshot; ``(path or None when it could not be written, JPEG)``."""
        jpeg = self.encode(image, det)
        path = self.directory / camera / f"{event_id}-{n}.jpg"
        tmp = path.with_name(f".{path.name}.tmp")
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(jpeg)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError as exc:
                with contextlib.suppress(OSError):  # a full disk must not keep a partial file
                    tmp.unlink()
                if not self._failing:
                    log.warning("cannot write snapshot %s: %s; snapshots are still published over MQTT, "
                                "and each new one tries the disk again", path, exc.strerror or exc)
                self._failing = True
                return None, jpeg
            if self._failing:
                log.info("snapshots are written again (%s)", path)
                self._failing = False
            self._files.append((path, len(jpeg)))
            self._bytes += len(jpeg)
            self._prune()
        return str(path), jpeg

    def adopt(self, path: Path) -> None:
        """A file written next to the snapshots (an event clip): it counts towards the same limits."""
        try:
            size = path.stat().st_size
        except OSError:
            return
        with self._lock:
            self._files.append((path, size))
            self._bytes += size
            self._prune()

    def encode(self, image: np.ndarray, det: Detection) -> bytes:
        """JPEG of ``image`` with ``det`` drawn, or of the box alone when ``crop`` is set."""
        if self.crop:
            bgr = as_bgr(image)
            h, w = bgr.shape[:2]
            x1, y1, x2, y2 = det.xyxy
            left, top = min(max(int(x1), 0), w - 1), min(max(int(y1), 0), h - 1)
            right, bottom = max(min(int(np.ceil(x2)), w), left + 1), max(min(int(np.ceil(y2)), h), top + 1)
            out = bgr[top:bottom, left:right]
        else:
            out = annotate(image, [det])
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError(f"JPEG encoding failed for an image of shape {out.shape}")
        return bytes(buf.tobytes())

    def _scan(self) -> None:
        if not self.directory.is_dir():
            return
        found: list[tuple[float, str, Path, int]] = []
        for path in self.directory.glob("*/*"):
            try:
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink()  # left over from a crash during a write
                elif path.suffix in {".jpg", ".mp4"} and path.is_file():  # snapshots and event clips
                    st = path.stat()
                    found.append((st.st_mtime, path.name, path, st.st_size))
            except OSError as exc:
                log.warning("cannot inspect snapshot %s: %s", path, exc.strerror or exc)
        for _, _, path, size in sorted(found):
            self._files.append((path, size))
            self._bytes += size
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        while len(self._files) > 1 and (len(self._files) > self.keep or self._bytes > self.max_bytes):
            path, size = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete old snapshot %s: %s", path, exc.strerror or exc)
