"""GET /ws: one chat connection, a thin transport over the chat service (chat/service.py). Frames are
parsed and built in chat/protocol.py and documented in docs/PROTOCOL.md. A connection follows its
session's turns, whoever started them; on hello it is first sent what it missed of the current one."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from chatserver import keys
from chatserver.chat.export import export
from chatserver.chat.protocol import (Cancel, DeleteSession, Edit, Export, Hello, Regenerate, Rename, Switch, System,
                                      User, message_items, parse_frame, path_frame, session_frame, turn_frame,
                                      turn_started_frame)
from chatserver.chat.sessions import LiveSession
from chatserver.chat.turn_log import TurnLog, replay_start
from chatserver.errors import BadRequest, SessionNotFound, code_of, error_frame
from engine import TurnEvent
from storage import Conversation

log = logging.getLogger(__name__)

SESSION_GONE = 4004  # WebSocket close code (application range): the session no longer exists
SESSION_MOVED = 4009  # another replica of the cluster serves the session now: reconnect


class Connection:
    """One socket's side of the protocol. Every frame it sends goes through one queue, drained by its
    sender task, in the order posted: replies, and the turn frames of the session it is attached to."""

    def __init__(self, ws: web.WebSocketResponse, app: web.Application):
        self.ws = ws
        self.sessions = app[keys.sessions]
        self.chat = app[keys.chat]
        self.engine = app[keys.engine]
        self.transcripts = app[keys.transcripts]
        self.live: LiveSession | None = None
        self._outbox: asyncio.Queue[dict | None] = asyncio.Queue()  # None: stop sending
        self._sender = asyncio.create_task(self._send_all())

    def post(self, frame: dict) -> None:
        self._outbox.put_nowait(frame)

    async def _send_all(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            try:
                await self.ws.send_str(json.dumps(frame, ensure_ascii=False))
            except (ConnectionError, RuntimeError):
                return  # the client went away; its session's turn goes on, in its log

    async def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most `timeout` seconds), then nothing more."""
        if self._sender.done():
            return
        self.post(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._sender), timeout)
        except TimeoutError:
            self._sender.cancel()

    # ---- SessionListener

    def on_turn_started(self, turn: TurnLog) -> None:
        self.post(turn_started_frame(turn))

    def on_turn_event(self, turn: TurnLog, seq: int, event: TurnEvent) -> None:
        self.post(turn_frame(turn, seq, event))

    def on_path_changed(self, conversation: Conversation, turn: TurnLog | None) -> None:
        self.post(path_frame(conversation, turn))

    async def terminate(self, code: str, message: str) -> None:
        """Server-side end of this connection (its session was deleted, or another replica serves it now):
        say why, close (4004: gone; 4009: moved, reconnect through the balancer)."""
        self.post({"type": "error", "code": code, "message": message})
        await self.flush()
        await self.ws.close(code=SESSION_MOVED if code == "session_moved" else SESSION_GONE, message=code.encode())

    # ---- frames from the client

    async def handle(self, text: str) -> None:
        try:
            frame = parse_frame(text)
            if isinstance(frame, Hello):
                await self.on_hello(frame)
            elif isinstance(frame, System):
                self.on_system(frame)
            elif isinstance(frame, User):
                await self.chat.ask(self._require_session(), frame.content, frame.sampling(), origin=self)
            elif isinstance(frame, Regenerate):
                await self.chat.regenerate(self._require_session(), frame.message_id, frame.sampling(), origin=self)
            elif isinstance(frame, Edit):
                await self.chat.edit(self._require_session(), frame.message_id, frame.content, frame.sampling(),
                                     origin=self)
            elif isinstance(frame, Switch):
                await self.chat.switch(self._require_session(), frame.message_id)
            elif isinstance(frame, Cancel):
                self.on_cancel()
            elif isinstance(frame, Rename):
                title = await self.chat.rename(self._require_session(), frame.title)
                self.post({"type": "renamed", "title": title})
            elif isinstance(frame, Export):
                self.post({"type": "export", "session": await export(self.transcripts, self._require_session(),
                                                                      frame.tree)})
            elif isinstance(frame, DeleteSession):
                await self.chat.delete(self._require_session().id, by="its owner")  # closes this connection too
        except Exception as exc:  # noqa: BLE001 - typed errors and bugs alike keep the socket open
            if code_of(exc) == "internal_error":
                log.exception("unexpected error handling a frame")
            self.post(error_frame(exc))

    async def on_hello(self, frame: Hello) -> None:
        if frame.session_id is None:
            if frame.last_seq is not None:
                raise BadRequest("last_seq: only with the session_id of a session to resume", param="last_seq")
            live, token = self.sessions.create()
            self._attach(live)
            self.post(session_frame(live.id, token, False, [], False, self.sessions.model_name,
                                    replica=self.sessions.replica))
            return
        live = await self.sessions.resume(frame.session_id, frame.resume_token)
        self.engine.prefetch(live.id)  # KV back from disk while the person types
        last_turn_id, last_seq = (frame.last_seq.turn_id, frame.last_seq.seq) if frame.last_seq else (None, None)
        async with live.lock:  # the transcript read and the log followed agree (LiveSession.lock)
            messages = message_items(live.conversation)
            turn = live.log
            start = replay_start(turn, last_turn_id, last_seq)  # raises BadRequest: nothing changed
            if live.is_deleted:
                raise SessionNotFound(f"no session {live.id!r}")
            if self.sessions.get_live(live.id) not in (None, live):  # forgotten and loaded again meanwhile
                return await self.on_hello(frame)
            if start is None:
                turn = None
            elif turn.is_finished and turn.is_answer_stored:
                assert messages and messages[-1]["role"] == "assistant"
                messages = messages[:-1]  # its answer follows as frames instead
            # no await from here: every later event of the turn reaches this connection once, after these
            self._attach(live)
            self.post(session_frame(live.id, frame.resume_token, True, messages, live.is_busy,
                                    self.sessions.model_name, turn, self.sessions.replica))
            if turn is not None:
                for seq, event in turn.after(start - 1):
                    self.on_turn_event(turn, seq, event)

    def _attach(self, live: LiveSession) -> None:
        if self.live is live:
            return
        if self.live is not None:
            self.sessions.detach(self.live, self)
        self.live = live
        self.sessions.attach(live, self)

    def on_system(self, frame: System) -> None:
        self.chat.set_system(self._require_session(), frame.content)

    def on_cancel(self) -> None:
        live = self._require_session()
        if live.stream is None:
            raise BadRequest("no turn is running")
        live.stream.cancel()

    @property
    def is_turn_running(self) -> bool:
        """A turn of this connection's session runs."""
        return self.live is not None and self.live.is_busy

    def _require_session(self) -> LiveSession:
        if self.live is None:
            raise BadRequest("send hello first")
        if self.live.is_deleted:
            raise SessionNotFound("this session was deleted")
        return self.live

    async def shut(self, code: int, message: bytes) -> None:
        """Server shutdown: send what is queued, then close."""
        await self.flush()
        await self.ws.close(code=code, message=message)

    async def close(self) -> None:
        """The socket is closed: leave the session (its running turn goes on) and stop sending."""
        if self.live is not None:
            self.sessions.detach(self.live, self)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)


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
        app[keys.websockets].add(conn)
        try:
            await _serve(ws, conn, http.ws_idle_timeout_s)
        finally:
            app[keys.websockets].discard(conn)
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
            conn.post(error_frame(BadRequest("binary frames are not supported; send JSON text")))
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


async def close_all(app: web.Application) -> None:
    """on_shutdown: cancel the running turns (their answers are stored, their `done` frames queued), then
    tell every client we are going away."""
    if keys.sessions in app:
        await app[keys.sessions].stop_turns()
    await asyncio.gather(*(conn.shut(WSCloseCode.GOING_AWAY, b"server shutdown") for conn in set(app[keys.websockets])))


def setup(app: web.Application) -> None:
    app.router.add_get("/ws", websocket_handler)
