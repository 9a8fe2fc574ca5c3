"""GET /ws: one chat connection, a thin transport over the chat service (chat/service.py). Frames are
parsed and built in chat/protocol.py and documented in docs/PROTOCOL.md."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from chatserver import keys
from chatserver.chat.protocol import Cancel, Hello, System, User, done_frame, parse_frame, session_frame
from chatserver.chat.sessions import LiveSession
from chatserver.engine_client import TurnStream
from chatserver.errors import BadRequest, Busy, SessionNotFound, code_of, error_frame
from engine import DoneEvent, ErrorEvent

log = logging.getLogger(__name__)

SESSION_GONE = 4004  # WebSocket close code (application range): the session no longer exists


class Connection:
    def __init__(self, ws: web.WebSocketResponse, app: web.Application):
        self.ws = ws
        self.sessions = app[keys.sessions]
        self.chat = app[keys.chat]
        self.engine = app[keys.engine]
        self.live: LiveSession | None = None
        self.turn_task: asyncio.Task | None = None
        self.stream: TurnStream | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, frame: dict) -> None:
        async with self._send_lock:
            await self.ws.send_str(json.dumps(frame, ensure_ascii=False))

    async def handle(self, text: str) -> None:
        try:
            frame = parse_frame(text)
            if isinstance(frame, Hello):
                await self.on_hello(frame)
            elif isinstance(frame, System):
                self.on_system(frame)
            elif isinstance(frame, User):
                await self.on_user(frame)
            elif isinstance(frame, Cancel):
                self.on_cancel()
        except Exception as exc:  # noqa: BLE001 - typed errors and bugs alike keep the socket open
            if code_of(exc) == "internal_error":
                log.exception("unexpected error handling a frame")
            await self.send(error_frame(exc))

    async def on_hello(self, frame: Hello) -> None:
        if self.is_turn_running:
            raise Busy("a turn is running on this connection")
        if frame.session_id is None:
            live, token, resumed = *self.sessions.create(), False
            messages = []
        else:
            live = await self.sessions.resume(frame.session_id, frame.resume_token)
            token, resumed = frame.resume_token, True
            self.engine.prefetch(live.id)  # KV back from disk while the person types
            messages = await self.chat.transcript(live)
        if self.live is not None:
            self.sessions.detach(self.live, self)
        self.live = live
        self.sessions.attach(live, self)
        await self.send(session_frame(live.id, token, resumed, messages, live.is_busy))

    def on_system(self, frame: System) -> None:
        self.chat.set_system(self._require_session(), frame.content)

    async def on_user(self, frame: User) -> None:
        live = self._require_session()
        self.stream = await self.chat.start_turn(live, frame.content, frame.sampling())
        self.turn_task = asyncio.create_task(self._forward(live, self.stream))

    async def _forward(self, live: LiveSession, stream: TurnStream) -> None:
        """The turn's events as frames; a vanished client does not stop the turn (it is stored whole)."""
        async for event in self.chat.answer(live, stream):
            if isinstance(event, DoneEvent):
                frame = done_frame(event)
            elif isinstance(event, ErrorEvent):
                frame = {"type": "error", "code": event.code, "message": event.message}
            elif event.text:
                frame = {"type": "token", "text": event.text}
            else:
                continue
            try:
                await self.send(frame)
            except (ConnectionError, RuntimeError):
                pass  # the client went away; the turn still completes and is stored

    def on_cancel(self) -> None:
        if not self.is_turn_running:
            raise BadRequest("no turn is running")
        self.stream.cancel()

    @property
    def is_turn_running(self) -> bool:
        return self.turn_task is not None and not self.turn_task.done()

    def _require_session(self) -> LiveSession:
        if self.live is None:
            raise BadRequest("send hello first")
        if self.live.is_deleted:
            raise SessionNotFound("this session was deleted")
        return self.live

    async def terminate(self, code: str, message: str) -> None:
        """Server-side end of this connection (its session was deleted): finish the turn, say why, close."""
        if self.is_turn_running:
            self.stream.cancel()
            await asyncio.shield(self.turn_task)
        try:
            await self.send({"type": "error", "code": code, "message": message})
        except (ConnectionError, RuntimeError):
            pass
        await self.ws.close(code=SESSION_GONE, message=code.encode())

    async def close(self) -> None:
        """The client is gone: stop its turn at the next engine step and wait for the answer to be stored."""
        if self.is_turn_running:
            self.stream.cancel()
            try:
                await asyncio.shield(self.turn_task)
            except Exception:  # noqa: BLE001 - already logged by the task
                pass
        if self.live is not None:
            self.sessions.detach(self.live, self)


def _is_same_origin(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Browsers send Origin; other clients usually do not. A foreign page must not drive a session."""
    origin = request.headers.get("Origin")
    if origin is None or origin in allowed:
        return True
    return urlsplit(origin).netloc == request.host


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    http = app[keys.config].http
    if not _is_same_origin(request, http.allowed_origins):
        raise web.HTTPForbidden(text="cross-origin WebSocket refused")
    gate = app[keys.connection_gate]
    client = gate.client_address(request)
    gate.admit(client)  # raises 503 / 429 before the upgrade
    try:
        ws = web.WebSocketResponse(max_msg_size=http.max_frame_bytes, heartbeat=http.ws_heartbeat_s)
        await ws.prepare(request)
        conn = Connection(ws, app)
        app[keys.websockets].add(ws)
        try:
            await _serve(ws, conn, http.ws_idle_timeout_s)
        finally:
            app[keys.websockets].discard(ws)
            await conn.close()
    finally:
        gate.release(client)
    return ws


async def _serve(ws: web.WebSocketResponse, conn: Connection, idle_timeout: float) -> None:
    """Handle frames until the socket closes; close it (1000, "idle timeout") after idle_timeout seconds
    without a frame from the client while no turn runs (heartbeat pongs do not count)."""
    while True:
        try:
            msg = await ws.receive(timeout=idle_timeout)
        except TimeoutError:
            if conn.is_turn_running:
                continue
            await ws.close(code=WSCloseCode.OK, message=b"idle timeout")
            return
        if msg.type == WSMsgType.TEXT:
            await conn.handle(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await conn.send(error_frame(BadRequest("binary frames are not supported; send JSON text")))
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


async def close_all(app: web.Application) -> None:
    """on_shutdown: tell every client we are going away (their turns are cancelled and stored)."""
    for ws in set(app[keys.websockets]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def setup(app: web.Application) -> None:
    app.router.add_get("/ws", websocket_handler)
