"""A thread's proof of progress, read by the systemd watchdog (``health.Liveness``).

A loop calls ``beat()`` each time round; before a call that may block for a bounded time (a backoff
wait, a camera open with its timeout) it calls ``beat(within_s)``: "I will be back within that".
``silent_s()`` is how long the thread has overrun what it announced. Imports nothing from edgedet.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Heartbeat:
    __slots__ = ("_clock", "_due")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due = clock()

    def beat(self, within_s: float = 0.0) -> None:
        self._due = self._clock() + max(0.0, within_s)

    def silent_s(self) -> float:
        return max(0.0, self._clock() - self._due)
