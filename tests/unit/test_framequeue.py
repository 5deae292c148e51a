from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgedet.framequeue import CameraQueue, FrameHub
from edgedet.metrics import Metrics
from edgedet.types import Frame

DEADLINE_S = 5.0


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, time.monotonic_ns(), time.time(), np.zeros((2, 2, 3), np.uint8))


def dropped(registry: CollectorRegistry, camera: str) -> float | None:
    labels = {"camera": camera, "reason": "queue_full"}
    return registry.get_sample_value("edgedet_frames_dropped_total", labels)


def depth_gauge(registry: CollectorRegistry, camera: str) -> float | None:
    return registry.get_sample_value("edgedet_queue_depth", {"camera": camera})


def drain(hub: FrameHub) -> list[tuple[str, int]]:
    out = []
    while (f := hub.get(timeout=0)) is not None:
        out.append((f.camera, f.seq))
    return out


class Runner:
    """Runs ``fn`` in a thread; ``done`` is set when it returns, ``result`` holds its value."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = "unset"
        self.started = threading.Event()
        self.done = threading.Event()

        def body() -> None:
            self.started.set()
            self.result = fn()
            self.done.set()

        self.thread = threading.Thread(target=body, name="test-runner")
        self.thread.start()
        assert self.started.wait(DEADLINE_S)

    def join(self) -> None:
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()


@pytest.mark.parametrize(
    ("maxsize", "puts", "kept", "drops"),
    [
        (1, 5, [4], 4),
        (2, 5, [3, 4], 3),
        (3, 2, [0, 1], 0),
        (1, 1, [0], 0),
    ],
)
def test_newest_wins(
    registry: CollectorRegistry, stop: threading.Event, maxsize: int, puts: int, kept: list[int], drops: int
) -> None:
    hub = FrameHub(stop, Metrics(registry))
    queue = hub.add_camera("gate", maxsize=maxsize)
    for seq in range(puts):
        assert queue.put(frame("gate", seq)) is True
    assert hub.depth("gate") == len(kept) == depth_gauge(registry, "gate")
    assert drain(hub) == [("gate", s) for s in kept]
    assert dropped(registry, "gate") == drops
    assert depth_gauge(registry, "gate") == 0


def test_backpressure_blocks_then_proceeds_without_dropping(
    registry: CollectorRegistry, stop: threading.Event
) -> None:
    hub = FrameHub(stop, Metrics(registry))
    queue = hub.add_camera("file", maxsize=1, backpressure=True)
    assert queue.put(frame("file", 0))
    putter = Runner(lambda: queue.put(frame("file", 1)))
    assert not putter.done.wait(0.2), "put into a full back-pressured queue must wait"
    first = hub.get(timeout=DEADLINE_S)
    assert first is not None and first.seq == 0
    assert putter.done.wait(DEADLINE_S)
    assert putter.result is True
    second = hub.get(timeout=DEADLINE_S)
    assert second is not None and second.seq == 1
    assert dropped(registry, "file") == 0
    putter.join()


def test_round_robin_flooded_camera_does_not_starve_others(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    a = hub.add_camera("a", maxsize=5)
    b = hub.add_camera("b", maxsize=5)
    hub.add_camera("c", maxsize=5)  # stalled: never has a frame
    for seq in range(5):
        a.put(frame("a", seq))
    b.put(frame("b", 0))
    b.put(frame("b", 1))
    assert drain(hub) == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("a", 3), ("a", 4)]


def test_round_robin_under_concurrent_flood(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    flood = hub.add_camera("flood", maxsize=1)
    quiet = [hub.add_camera(name, maxsize=1) for name in ("q1", "q2")]
    flooding = threading.Event()

    def flood_forever() -> None:
        seq = 0
        while not stop.is_set():
            flood.put(frame("flood", seq))
            seq += 1
            flooding.set()

    flooder = threading.Thread(target=flood_forever, name="test-flooder")
    flooder.start()
    try:
        assert flooding.wait(DEADLINE_S)
        for q in quiet:
            q.put(frame(q.name, 0))
        seen = set()
        for _ in range(3):
            got = hub.get(timeout=DEADLINE_S)
            assert got is not None
            seen.add(got.camera)
        assert {"q1", "q2"} <= seen
    finally:
        stop.set()
        flooder.join(DEADLINE_S)
    assert not flooder.is_alive()


def test_backpressure_many_producers_and_consumers_deliver_everything_in_order(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    n = 200
    queues = [hub.add_camera(name, maxsize=2, backpressure=True) for name in ("a", "b")]
    received: list[tuple[str, int]] = []
    lock = threading.Lock()

    def produce(q: CameraQueue) -> None:
        for seq in range(n):
            assert q.put(frame(q.name, seq))
        q.close()

    def consume() -> None:
        while True:
            got = hub.get(timeout=0.05)
            if got is None:
                if hub.ended():
                    return
                continue
            with lock:
                received.append((got.camera, got.seq))

    threads = [threading.Thread(target=produce, args=(q,), name=f"test-p-{q.name}") for q in queues]
    threads += [threading.Thread(target=consume, name=f"test-c-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S * 2)
        assert not t.is_alive()
    assert sorted(received) == sorted((name, s) for name in ("a", "b") for s in range(n))


def test_close_delivers_queued_frames_then_ended(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    a = hub.add_camera("a", maxsize=2)
    b = hub.add_camera("b", maxsize=2)
    a.put(frame("a", 0))
    a.put(frame("a", 1))
    a.close()
    assert a.closed
    assert a.put(frame("a", 2)) is False
    assert not hub.ended()  # a still has frames, b is open
    b.close()
    assert not hub.ended()  # a still has frames
    assert drain(hub) == [("a", 0), ("a", 1)]
    assert hub.ended()
    assert hub.get(timeout=0.01) is None


def test_get_times_out(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    hub.add_camera("a")
    started = time.monotonic()
    assert hub.get(timeout=0.1) is None
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize("how", ["stop", "close"])
def test_stop_or_close_wakes_blocked_get(stop: threading.Event, how: str) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    hub.add_camera("a")
    getter = Runner(lambda: hub.get(timeout=60))
    assert not getter.done.wait(0.1)
    if how == "stop":
        stop.set()
    else:
        hub.close()
    assert getter.done.wait(1.0)
    assert getter.result is None
    getter.join()
    if how == "close":
        assert hub.ended()


@pytest.mark.parametrize("how", ["stop", "close_hub", "close_queue"])
def test_stop_or_close_wakes_blocked_put(stop: threading.Event, how: str) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    queue = hub.add_camera("a", maxsize=1, backpressure=True)
    queue.put(frame("a", 0))
    putter = Runner(lambda: queue.put(frame("a", 1)))
    assert not putter.done.wait(0.1)
    if how == "stop":
        stop.set()
    elif how == "close_hub":
        hub.close()
    else:
        queue.close()
    assert putter.done.wait(1.0)
    assert putter.result is False
    putter.join()


def test_errors(stop: threading.Event) -> None:
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    queue = hub.add_camera("gate")
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        hub.add_camera("other", maxsize=0)
    with pytest.raises(ValueError, match="'gate' already has a queue"):
        hub.add_camera("gate")
    with pytest.raises(ValueError, match="frame for camera 'yard' put into queue 'gate'"):
        queue.put(frame("yard", 0))
    with pytest.raises(KeyError):
        hub.depth("nope")


# --------------------------------------------------------------------------- fresh-frame policy


def _live_frame(camera: str, seq: int, age_ms: float) -> Frame:
    return Frame(camera, seq, time.monotonic_ns() - int(age_ms * 1e6), time.time(), np.zeros((2, 2, 3), np.uint8))


def _prime_period(queue, camera: str, period_ms: float = 40.0, n: int = 5) -> None:
    """Put frames spaced ``period_ms`` apart (by timestamp) so the queue learns the camera's period."""
    base = time.monotonic_ns() - int(10 * period_ms * 1e6)
    for i in range(n):
        queue.put(Frame(camera, i, base + int(i * period_ms * 1e6), time.time(), np.zeros((2, 2, 3), np.uint8)))


def test_stale_frame_is_replaced_by_the_next_one():
    """A worker finding a frame older than 0.6 x the period takes the next frame instead."""
    stop = threading.Event()
    registry = CollectorRegistry()
    hub = FrameHub(stop, Metrics(registry))
    q = hub.add_camera("cam", maxsize=1)
    _prime_period(q, "cam")
    assert hub.get(timeout=1).seq == 4  # the priming frames are old: drain the last one
    q.put(_live_frame("cam", 10, age_ms=35))  # stale: 35 ms of a 40 ms period
    feeder = threading.Thread(target=lambda: q.put(_live_frame("cam", 11, age_ms=0)))
    feeder.start()
    got = hub.get(timeout=1)
    feeder.join(5)
    assert got.seq == 11
    dropped = registry.get_sample_value("edgedet_frames_dropped_total", {"camera": "cam", "reason": "queue_full"})
    assert dropped >= 5  # 4 replaced while priming + the stale one


def test_stale_frame_is_used_when_no_newer_one_comes():
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    q = hub.add_camera("cam", maxsize=1)
    _prime_period(q, "cam")
    hub.get(timeout=1)
    q.put(_live_frame("cam", 10, age_ms=35))
    assert hub.get(timeout=1).seq == 10  # waited at most ~0.25 period, then took it


def test_fresh_policy_never_idles_while_another_camera_waits():
    """With camera b's frame waiting, a's stale frame is served as it is (no wait for a newer one)."""
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    a = hub.add_camera("a", maxsize=1)
    b = hub.add_camera("b", maxsize=1)
    _prime_period(a, "a")
    assert hub.get(timeout=1).camera == "a"
    b.put(_live_frame("b", 0, age_ms=0))
    assert hub.get(timeout=1).camera == "b"  # round-robin: a is next
    a.put(_live_frame("a", 10, age_ms=35))
    b.put(_live_frame("b", 1, age_ms=0))
    first = hub.get(timeout=1)
    assert (first.camera, first.seq) == ("a", 10)
    assert (hub.get(timeout=1).camera, len(a)) == ("b", 0)


@pytest.mark.parametrize(("maxsize", "backpressure"), [(1, True), (2, False)])
def test_fresh_policy_only_for_live_newest_frame_queues(maxsize, backpressure):
    stop = threading.Event()
    hub = FrameHub(stop, Metrics(CollectorRegistry()))
    q = hub.add_camera("cam", maxsize=maxsize, backpressure=backpressure)
    _prime_period(q, "cam", n=maxsize + 1 if backpressure is False else 1)
    while len(q):
        hub.get(timeout=1)
    q.put(_live_frame("cam", 10, age_ms=35))
    assert hub.get(timeout=1).seq == 10
