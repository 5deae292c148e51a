"""The ``mqtt-outbox`` thread: hands stored outbox rows to paho in id order and removes each on its PUBACK.

The publisher (``client.py``) stores a QoS>=1 message in the ``Outbox`` and calls ``wake()``; this
thread sends it. At most ``OUTBOX_WINDOW`` rows are unacknowledged at a time. After every (re)connect
-- the publisher calls ``connected()`` once ``online`` and the camera statuses are out -- it resends
the whole outbox from the oldest row, so live messages never overtake a backlog. Rows in flight when
a connection drops are sent again (at-least-once).

A row that is the oldest unacknowledged one at ``PARK_AFTER_DISCONNECTS`` disconnects in a row
(a broker that drops the connection on it, e.g. over its ``max_packet_size``) is parked: moved
out of the queue, counted, logged once, so the rows behind it flow again. When the outbox swaps
its store (a damaged file replaced, degraded to memory, back on disk) the replay starts over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edgedet.outputs.outbox import Outbox, OutboxError, OutboxMessage

log = logging.getLogger("edgedet.publish")  # the publisher's stage name: one name for the whole MQTT output

#: Outbox rows handed to paho and not yet acknowledged, at most.
OUTBOX_WINDOW = 100
#: A row still unacknowledged (the oldest in flight) at this many disconnects in a row is parked.
PARK_AFTER_DISCONNECTS = 3
_MAINTAIN_S = 1.0  # Outbox.maintain(): expiry, disk retry while degraded


class OutboxSender:
    """Feeds outbox rows to paho in id order from the ``mqtt-outbox`` thread; removes acked rows.

    Locking (paho calls ``on_publish`` while holding its internal message lock, and
    ``client.publish`` takes that lock):

    * ``_cond`` guards the shared fields below and is never held while calling paho;
      ``on_publish`` only appends the mid and notifies. Acks are matched to rows on this thread,
      after the mid of each publish has been recorded, so an early PUBACK cannot be missed.
    * ``_gate`` is held around "still connected in this generation? then ``client.publish``" and
      taken by ``on_pre_connect``, which paho calls before it opens a new socket (holding none of
      its locks). So no row is written to a reconnecting socket ahead of the replay: rows go out
      only after ``connected()``, which the publisher calls once ``online`` has been queued.
    """

    def __init__(self, outbox: Outbox, client: mqtt.Client, addr: str,
                 on_park: Callable[[OutboxMessage, str], None] | None = None) -> None:
        self._outbox = outbox
        self._on_park = on_park
        self._client = client
        self._addr = addr
        self._cond = threading.Condition()
        self._gate = threading.Lock()
        # shared, under _cond
        self._acks: list[int] = []
        self._up = False
        self._gen = 0  # +1 per successful connect: each connect replays from the oldest row
        self._dirty = True  # rows may exist past the cursor (rows from a previous run, too)
        self._stopping = False
        self._sent_mids: set[int] = set()  # mids of rows handed to paho and not acked (any connection)
        # sender thread only
        self._suspect: tuple[int, int] | None = None  # (row id, disconnects it was the oldest in flight at)
        self._store_gen = outbox.generation
        self._inflight: dict[int, int] = {}  # paho mid -> row id, until its PUBACK
        self._cursor = 0  # highest row id handed to paho on this connection
        self._replay: tuple[float, int, int] | None = None  # (monotonic start, rows, newest id)
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1f s", thread.name, timeout)

    def wake(self) -> None:
        """A row was added."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def connected(self) -> None:
        with self._cond:
            self._up = True
            self._gen += 1
            self._dirty = True
            self._cond.notify_all()

    def disconnected(self) -> None:
        with self._cond:
            self._up = False
            self._cond.notify_all()

    def take_stale_mids(self) -> set[int]:
        """The paho mids of rows sent on earlier connections and not acknowledged; the caller drops
        them from paho's queue on a reconnect (the replay sends the rows again, in order)."""
        with self._cond:
            mids, self._sent_mids = self._sent_mids, set()
        return mids

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True), or disconnected / ``timeout`` (False)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._outbox) == 0 or not self._up or self._stopping, timeout)
        return len(self._outbox) == 0

    # ---------------------------------------------------------------- paho callbacks (loop thread)

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acks.append(mid)
            self._sent_mids.discard(mid)
            self._cond.notify_all()

    def on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        with self._gate, self._cond:
            self._up = False

    # ---------------------------------------------------------------- sender thread

    def _run(self) -> None:
        gen_seen = 0
        retry_at = 0.0
        maintain_at = 0.0
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = time.monotonic()
                    can_feed = self._up and self._dirty and len(self._inflight) < OUTBOX_WINDOW
                    if self._acks or self._gen != gen_seen or (can_feed and now >= retry_at) or now >= maintain_at:
                        break
                    self._cond.wait(min(retry_at, maintain_at) - now if can_feed else maintain_at - now)
                acks, self._acks = self._acks, []
                gen = self._gen
            try:
                if time.monotonic() >= maintain_at:
                    maintain_at = time.monotonic() + _MAINTAIN_S
                    self._outbox.maintain()
                if acks:
                    self._ack(acks)
                if self._outbox.generation != self._store_gen:  # a new store: replay it from the start
                    self._store_gen = self._outbox.generation
                    self._inflight.clear()
                    self._cursor = 0
                    self.wake()
                if gen != gen_seen:
                    gen_seen = gen
                    self._strike()
                    self._inflight.clear()  # acks of the old connection never come
                    self._cursor = 0
                    self._start_replay()
                if not self._feed(gen):
                    retry_at = time.monotonic() + 1.0
                self._set_error(None)
            except OutboxError as exc:
                self._set_error(str(exc))
                retry_at = time.monotonic() + 1.0
                self.wake()
            except Exception as exc:  # never let the outbox stop silently; rows stay on disk
                if self._error != repr(exc):
                    log.exception("MQTT outbox sender failed; retrying every second")
                self._error = repr(exc)
                retry_at = time.monotonic() + 1.0
                self.wake()

    def _strike(self) -> None:
        """A new connection: count a disconnect against the oldest row that was in flight."""
        if not self._inflight:
            return
        oldest = min(self._inflight.values())
        strikes = self._suspect[1] + 1 if self._suspect is not None and self._suspect[0] == oldest else 1
        self._suspect = (oldest, strikes)
        if strikes < PARK_AFTER_DISCONNECTS:
            return
        self._suspect = None
        row = self._outbox.park(oldest, "disconnects")
        if row is not None:
            log.warning("MQTT message for %r (%d bytes) was in flight at %d disconnects in a row; parked it "
                        "(edgedet_mqtt_parked_total) so the messages behind it go out", row.topic,
                        len(row.payload), strikes)
            if self._on_park is not None:
                self._on_park(row, "disconnects")

    def _ack(self, mids: list[int]) -> None:
        rows = [self._inflight.pop(mid) for mid in mids if mid in self._inflight]
        if not rows:
            return  # status messages, or direct sends
        if self._suspect is not None and self._suspect[0] in rows:
            self._suspect = None
        self._outbox.remove(rows)
        with self._cond:
            self._cond.notify_all()  # wait_drained()
        if self._replay is not None:
            started, backlog, newest = self._replay
            ids = self._outbox.id_range()
            if ids is None or ids[0] > newest:  # every row stored before the connect is acknowledged
                log.info("MQTT outbox replay to %s done: %d stored message(s) acknowledged in %.2f s",
                         self._addr, backlog, time.monotonic() - started)
                self._replay = None

    def _start_replay(self) -> None:
        ids = self._outbox.id_range()
        self._replay = None
        if ids is not None:
            backlog = len(self._outbox)
            log.info("MQTT outbox: replaying %d stored message(s) to %s", backlog, self._addr)
            self._replay = (time.monotonic(), backlog, ids[1])

    def _feed(self, gen: int) -> bool:
        """Hand the next rows to paho; False when paho refused one (retry later)."""
        room = OUTBOX_WINDOW - len(self._inflight)
        with self._cond:
            if not (self._up and self._gen == gen and self._dirty and room > 0):
                return True
            self._dirty = False  # wake() after this point sets it again: no lost wake-up
        rows = self._outbox.pending(self._cursor, room)
        more = len(rows) == room
        ok = True
        for row in rows:
            error = ""
            with self._gate:
                with self._cond:
                    current = self._up and self._gen == gen and not self._stopping
                if not current:
                    more = True  # the next connection replays from the oldest row anyway
                    break
                try:
                    info = self._client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                except ValueError as exc:  # cannot ever be sent (stored by an older version?)
                    info = None
                    error = str(exc)
            if info is None:
                log.warning("dropping stored MQTT message for %r: %s", row.topic, error)
                self._outbox.remove([row.id])
                self._cursor = row.id
                continue
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # NO_CONN: paho keeps it in memory and resends it on reconnect; the replay sends
                # it again too (at-least-once), so it counts as in flight either way.
                self._inflight[info.mid] = row.id
                self._cursor = row.id
                with self._cond:
                    if info.mid not in self._acks:
                        self._sent_mids.add(info.mid)
            else:  # paho's queue is full: try again shortly, in order
                log.debug("paho refused outbox row %d: %s", row.id, mqtt.error_string(info.rc))
                more, ok = True, False
                break
        if more:
            with self._cond:
                self._dirty = True
        return ok

    def _set_error(self, error: str | None) -> None:
        if error == self._error:
            return
        if error is not None:
            log.error("MQTT outbox: %s; retrying every second", error)
        elif self._error is not None:
            log.info("MQTT outbox works again")
        self._error = error
