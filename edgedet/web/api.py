"""The ASGI app: ``/metrics``, ``/healthz``, the REST API under ``/api/v1`` and the UI (``/``).

Handlers read what the pipeline publishes (``Console``); blocking work (SQLite, JPEG encoding) runs
in the thread pool, never on the event loop. The OpenAPI document is at ``/openapi.json`` (no
Swagger UI: it loads from a CDN, and the box is offline). Needs the ``web`` extra.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from edgedet import __version__
from edgedet.metrics import health_response
from edgedet.web.feedback import CATEGORIES
from edgedet.web.live import MAX_HEIGHT, MIN_HEIGHT
from edgedet.web.status import Console

__all__ = ["WRITE_HEADER", "create_app"]

WRITE_HEADER = "X-Edgedet-Write"
CAMERA_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
EVENT_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
_OPEN_PATHS = frozenset({"/healthz"})
_BOUNDARY = b"frame"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

CameraName = Annotated[str, PathParam(pattern=CAMERA_PATTERN, description="A configured camera.")]
EventId = Annotated[str, PathParam(pattern=EVENT_PATTERN, description="An event id.")]
Height = Annotated[int | None, Query(ge=MIN_HEIGHT, le=MAX_HEIGHT, description="Downscale to this height.")]
Category = Literal["cloud", "fog", "glare", "dust", "industrial_smoke", "other"]
assert set(Category.__args__) == set(CATEGORIES)  # type: ignore[attr-defined]


class FeedbackIn(BaseModel):
    """A verdict on one event."""

    model_config = ConfigDict(extra="forbid")
    verdict: Literal["true_alarm", "false_alarm"]
    category: Category | None = None
    note: str = Field(default="", max_length=2000)


class Auth:
    """Bearer token or basic auth (``username:token``), compared as SHA-256 digests in constant
    time, on every path except ``/healthz`` (and ``/metrics`` when ``metrics_open``)."""

    def __init__(self, app: Asgi, token: str, username: str, metrics_open: bool) -> None:
        self.app = app
        self._token = hashlib.sha256(token.encode()).digest()
        self._user = hashlib.sha256(username.encode()).digest()
        self.open = _OPEN_PATHS | ({"/metrics"} if metrics_open else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = b'{"detail":"authentication required"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Basic realm="edgedet", charset="UTF-8"')]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(hashlib.sha256(value.strip().encode()).digest(), self._token)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(hashlib.sha256(user.encode()).digest(), self._user)
            return hmac.compare_digest(hashlib.sha256(password.encode()).digest(), self._token) and user_ok
        return False


class Headers:
    """Security headers on every response; ``no-store`` on the API."""

    def __init__(self, app: Asgi) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def _when(value: str | None, name: str) -> float | None:
    """Epoch seconds or ISO 8601 (``2026-05-01T12:00:00Z``) -> epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{name}: expected epoch seconds or ISO 8601 (got {value[:40]!r})") from None
    if stamp.tzinfo is None:
        raise HTTPException(422, f"{name}: an ISO 8601 time needs a zone (Z or +hh:mm)")
    return stamp.timestamp()


def create_app(console: Console, closing: asyncio.Event | None = None) -> Asgi:
    """The app for ``console``; ``closing`` ends the MJPEG streams (server shutdown)."""
    app = FastAPI(title="edgedet", version=__version__, description="Edge detection daemon: live cameras, "
                  "event history and feedback.", openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    write_token = secrets.token_urlsafe(24)  # per process; the UI reads it from /api/v1/session
    static = resources.files("edgedet.web").joinpath("static")
    closing = closing or asyncio.Event()
    state_root = console.state_dir.resolve()
    state_snapshots = state_root / "snapshots"

    def camera(name: str) -> str:
        if name not in console.cameras():
            raise HTTPException(404, f"no camera {name!r}")
        return name

    def event_or_404(event_id: str) -> dict[str, Any]:
        if ".." in event_id:
            raise HTTPException(422, "event id: '..' is not allowed")
        event = console.history.get(event_id)
        if event is None:
            raise HTTPException(404, f"no event {event_id!r}")
        return event

    @app.get("/healthz", include_in_schema=True, tags=["ops"], summary="Health: 200 while frames flow")
    def healthz() -> Response:
        code, body = health_response(console.health)
        return Response(body, status_code=code, media_type="application/json")

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(console.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/api/v1/session", tags=["api"], summary="The write token for POST requests (header X-Edgedet-Write)")
    def session() -> dict[str, Any]:
        return {"write_header": WRITE_HEADER, "write_token": write_token, "node": console.node}

    @app.get("/api/v1/status", tags=["api"], summary="Node, version, model, threads, broker, outbox, disk, uptime")
    def status() -> dict[str, Any]:
        return console.status()

    @app.get("/api/v1/cameras", tags=["api"], summary="Per camera: state, fps, latency, detections, events")
    def cameras() -> list[dict[str, Any]]:
        return console.camera_list()

    @app.get("/api/v1/cameras/{name}/latest.jpg", tags=["api"], summary="Newest processed frame (JPEG)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def latest(name: CameraName, raw: bool = False, h: Height = None) -> Response:
        jpeg = await asyncio.wrap_future(console.live.submit(camera(name), raw, h))
        if jpeg is None:
            raise HTTPException(404, f"camera {name!r} has no processed frame yet")
        return Response(jpeg.data, media_type="image/jpeg", headers={"X-Frame-Seq": str(jpeg.seq)})

    @app.get("/api/v1/cameras/{name}/stream.mjpeg", tags=["api"], response_class=StreamingResponse,
             summary="Live annotated frames (multipart MJPEG) at <= fps per viewer")
    async def stream(name: CameraName, raw: bool = False, h: Height = None,
                     fps: Annotated[float | None, Query(gt=0, le=30)] = None) -> StreamingResponse:
        camera(name)
        period = 1.0 / min(fps or console.web.stream_fps, console.web.stream_fps)

        async def parts() -> AsyncIterator[bytes]:
            last = -1
            while not closing.is_set():
                jpeg = await asyncio.wrap_future(console.live.submit(name, raw, h))
                if jpeg is not None and jpeg.seq != last:
                    last = jpeg.seq
                    yield (b"--" + _BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                           + str(len(jpeg.data)).encode() + b"\r\n\r\n" + jpeg.data + b"\r\n")
                try:
                    await asyncio.wait_for(closing.wait(), period)
                except asyncio.TimeoutError:
                    pass

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={_BOUNDARY.decode()}")

    @app.get("/api/v1/events", tags=["api"], summary="Event history, newest first")
    def events(camera: Annotated[str | None, Query(pattern=CAMERA_PATTERN)] = None,
               label: Annotated[str | None, Query(max_length=128)] = None,
               since: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
               until: Annotated[str | None, Query(description="epoch seconds or ISO 8601")] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50,
               verdict: Literal["true_alarm", "false_alarm", "none"] | None = None) -> list[dict[str, Any]]:
        return console.history.query(camera=camera, label=label, since=_when(since, "since"),
                                     until=_when(until, "until"), verdict=verdict, limit=limit)

    @app.get("/api/v1/events/{event_id}", tags=["api"], summary="One event with all its lifecycle fields")
    def event(event_id: EventId) -> dict[str, Any]:
        return event_or_404(event_id)

    @app.get("/api/v1/events/{event_id}/snapshot.jpg", tags=["api"], summary="The event's latest snapshot",
             response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}}}})
    def snapshot(event_id: EventId) -> FileResponse:
        found = event_or_404(event_id)
        if not found["snapshot"]:
            raise HTTPException(404, f"event {event_id!r} has no snapshot")
        path = Path(found["snapshot"]).resolve()
        if not path.is_relative_to(state_snapshots) or path.suffix != ".jpg":
            raise HTTPException(404, f"event {event_id!r} has no snapshot")
        if not path.is_file():
            raise HTTPException(404, f"the snapshot of event {event_id!r} was deleted (snapshot retention)")
        return FileResponse(path, media_type="image/jpeg")

    @app.get("/api/v1/events/{event_id}/clip.mp4", tags=["api"], summary="The event's clip (once clips are on)",
             response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}}})
    def clip(event_id: EventId) -> FileResponse:
        found = event_or_404(event_id)
        path = Path(found["clip"]).resolve() if found.get("clip") else None
        if path is None or not path.is_relative_to(state_root) or path.suffix != ".mp4" or not path.is_file():
            raise HTTPException(404, f"event {event_id!r} has no clip")
        return FileResponse(path, media_type="video/mp4")

    @app.post("/api/v1/events/{event_id}/feedback", tags=["api"], summary="Mark an event true or false alarm",
              description=f"Needs the header {WRITE_HEADER} with the token from /api/v1/session.")
    def feedback(event_id: EventId, body: FeedbackIn,
                 x_edgedet_write: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        if x_edgedet_write is None or not hmac.compare_digest(x_edgedet_write.encode(), write_token.encode()):
            raise HTTPException(403, f"writes need the {WRITE_HEADER} header from /api/v1/session")
        event_or_404(event_id)
        try:
            updated = console.feedback.submit(event_id, body.verdict, body.category, body.note)
        except sqlite3.Error as exc:
            raise HTTPException(503, f"cannot store the feedback: {exc}") from None
        if updated is None:
            raise HTTPException(404, f"no event {event_id!r}")
        return updated

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    wrapped: Asgi = Headers(app)
    if console.web.auth_token:
        wrapped = Auth(wrapped, console.web.auth_token, console.web.username, console.web.metrics_open)
    return wrapped
