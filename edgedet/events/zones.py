"""Where a detection counts: named zones and masks (polygons), and box overlap.

A zone's coordinates are fractions of the frame size unless ``pixels`` is set; a point on a
polygon's edge counts as inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgedet.config import CameraConfig, Polygon

__all__ = ["Zone", "box_iou", "zones_from_config"]


@dataclass(frozen=True, slots=True)
class Zone:
    """A named polygon; ``pixels`` False means coordinates are fractions of the frame size."""

    name: str
    points: tuple[tuple[float, float], ...]
    pixels: bool = False

    def __post_init__(self) -> None:
        if len(self.points) < 3:
            raise ValueError(f"Zone {self.name!r} needs at least 3 points (got {len(self.points)})")

    @classmethod
    def from_polygon(cls, name: str, polygon: Polygon) -> Zone:
        return cls(name, polygon.points, polygon.pixels)

    def contains(self, x: float, y: float, width: int, height: int) -> bool:
        """True when pixel point (x, y) of a ``width`` x ``height`` frame is inside or on an edge."""
        sx, sy = (1.0, 1.0) if self.pixels else (float(width), float(height))
        pts = [(px * sx, py * sy) for px, py in self.points]
        tolerance = 1e-6 * max(1.0, sx, sy, abs(x), abs(y))
        inside = False
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
            length = abs(x2 - x1) + abs(y2 - y1)
            if (abs(cross) <= tolerance * max(length, 1.0)
                    and min(x1, x2) - tolerance <= x <= max(x1, x2) + tolerance
                    and min(y1, y2) - tolerance <= y <= max(y1, y2) + tolerance):
                return True  # on the edge
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


def zones_from_config(camera: CameraConfig) -> tuple[list[Zone], list[Zone]]:
    """``(zones, masks)`` of a camera; masks are named ``mask0``, ``mask1``, ..."""
    zones = [Zone.from_polygon(name, poly) for name, poly in camera.zones.items()]
    masks = [Zone.from_polygon(f"mask{i}", poly) for i, poly in enumerate(camera.masks)]
    return zones, masks


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes (1.0 for two equal empty boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    if union <= 0.0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union
