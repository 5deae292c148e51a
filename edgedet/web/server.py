"""uvicorn in its own thread (``metrics-http``) with its own event loop.

Every connection has a deadline: one that has not sent a whole request head within
``request_timeout_s`` (on connect, and again after each response) is closed, so slow or idle
clients cannot pile up; idle keep-alive connections close after 5 s. Past ``max_connections``
uvicorn answers 503. A single event loop holds hundreds of idle connections without a thread each.
Needs the ``web`` extra.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgedet.errors import ConfigError, EnvironmentFault
from edgedet.web.live import lower_priority

__all__ = ["WebServer"]

log = logging.getLogger("edgedet.web")

KEEP_ALIVE_S = 5
_WANT_FILES = 4096


def _protocol(request_timeout_s: float) -> type[H11Protocol]:
    class Protocol(H11Protocol):
        """h11 with a deadline for each request head (uvicorn has none before the first request)."""

        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(request_timeout_s, self._expire, self.cycle)

        def _expire(self, cycle: object) -> None:
            # Still the same cycle as when armed: no new request head arrived in time.
            if self.cycle is cycle and not self.transport.is_closing():
                if cycle is None or self.cycle.response_complete:
                    self.transport.close()

    return Protocol


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _WANT_FILES if hard == resource.RLIM_INFINITY else min(_WANT_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("web: cannot raise the open-file limit from %d: %s", soft, exc)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"metrics.host: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EnvironmentFault(f"metrics.port: {host}:{port} is already in use") from exc
        raise ConfigError(f"metrics.host: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


class WebServer:
    """The ASGI ``app`` on ``host:port``; ``start()`` returns once it accepts connections."""

    def __init__(self, app: Any, host: str, port: int, request_timeout_s: float = 10.0,
                 max_connections: int = 1000, on_tick: Any = None) -> None:
        _raise_file_limit()
        self._sock = _bind(host, port)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = uvicorn.Config(
            app, http=_protocol(request_timeout_s), ws="none", lifespan="off", interface="asgi3",
            log_config=None, access_log=False, limit_concurrency=max_connections,
            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=1, server_header=False,
            h11_max_incomplete_event_size=16 * 1024)
        self._server = uvicorn.Server(config)
        self._on_tick = on_tick  # called about once a second on the loop thread (sampling)
        self.closing: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        lower_priority()  # serving yields to the pipeline (the threads it starts inherit this)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self._tick()) if self._on_tick is not None else None
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._ready.set()
            if ticker is not None:
                ticker.cancel()

    async def _tick(self) -> None:
        while True:
            if self._server.started:
                self._ready.set()
                try:
                    await asyncio.to_thread(self._on_tick)
                except Exception:  # sampling must never stop serving
                    log.exception("web: sampling failed")
            await asyncio.sleep(1.0 if self._server.started else 0.01)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not (self._ready.is_set() or self._server.started):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise EnvironmentFault(f"web server did not start within {timeout:.0f} s")
            self._ready.wait(0.01)
        host, port = self.server_address
        log.info("web console on http://%s:%s/ (metrics on /metrics)", host, port)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self.closing is not None and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self.closing.set)
            except RuntimeError:
                pass
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("thread %s still alive %.1f s after stop", self.thread.name, timeout)
        self._sock.close()
