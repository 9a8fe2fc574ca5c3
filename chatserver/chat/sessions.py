"""Chat sessions as the server sees them: credentials, the live transcript, one turn at a time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from chatserver.chat.credentials import hash_token, new_resume_token, new_session_id, token_matches
from chatserver.errors import SessionNotFound, Unauthorized
from engine import ChatMessage
from storage import TranscriptStore


@dataclass(eq=False)
class LiveSession:
    """A session with at least one connection. `is_busy` is set synchronously when a turn is
    accepted, before any await, so a second turn from any connection is refused."""

    id: str
    token_hash: str
    messages: list[ChatMessage]  # transcript as stored, in order
    is_stored: bool = True  # False until its first turn: a hello alone writes nothing to the database
    created: float = field(default_factory=time.monotonic)
    pending_system: str | None = None  # system prompt sent before the first turn, stored with it
    is_busy: bool = False
    is_deleted: bool = False  # by an operator: nothing more is stored or accepted
    connections: set = field(default_factory=set)  # chatserver.chat.websocket.Connection

    @property
    def has_turns(self) -> bool:
        return any(m.role == "user" for m in self.messages)


_UNSTORED_GRACE_SECONDS = 3600.0  # an empty session can be resumed (e.g. after a dropped connection) this long


class LiveSessions:
    """The sessions with a connection or a running turn, by id (event loop only)."""

    def __init__(self, transcripts: TranscriptStore, model_name: str, on_idle=None):
        """on_idle(session_id): called when a session's last connection leaves and no turn runs."""
        self._repo = transcripts
        self._model_name = model_name
        self._on_idle = on_idle
        self._live: dict[str, LiveSession] = {}

    def create(self) -> tuple[LiveSession, str]:
        """A new session, kept in memory until its first turn stores it (see store_if_new)."""
        self._purge_unstored()
        session_id, token = new_session_id(), new_resume_token()
        live = self._live[session_id] = LiveSession(session_id, hash_token(token), [], is_stored=False)
        return live, token

    async def store_if_new(self, live: LiveSession) -> None:
        if not live.is_stored:
            await self._repo.create(live.id, live.token_hash, self._model_name)
            live.is_stored = True

    async def resume(self, session_id: str, token: str | None) -> LiveSession:
        live = self._live.get(session_id)
        if live is None:
            record = await self._repo.get(session_id)
            if record is None:
                raise SessionNotFound(f"no session {session_id!r}")
            token_hash = record.token_hash
        else:
            token_hash = live.token_hash
        if live is not None and live.is_deleted:
            raise SessionNotFound(f"no session {session_id!r}")
        if token is None or not token_matches(token, token_hash):
            raise Unauthorized("wrong or missing resume_token for this session")
        if live is None:
            stored = await self._repo.messages(session_id)
            # another connection may have loaded it while we awaited
            live = self._live.setdefault(
                session_id, LiveSession(session_id, token_hash, [ChatMessage(m.role, m.content) for m in stored]))
        return live

    def attach(self, live: LiveSession, connection: object) -> None:
        live.connections.add(connection)
        self._live[live.id] = live

    def detach(self, live: LiveSession, connection: object) -> None:
        live.connections.discard(connection)
        self.forget_if_idle(live)

    def forget_if_idle(self, live: LiveSession) -> None:
        if not live.is_stored:
            return  # kept for a while by _purge_unstored, so that a reconnect can resume it
        if not live.connections and not live.is_busy and self._live.get(live.id) is live:
            del self._live[live.id]
            if self._on_idle is not None:
                self._on_idle(live.id)

    def _purge_unstored(self) -> None:
        cutoff = time.monotonic() - _UNSTORED_GRACE_SECONDS
        for session_id, live in list(self._live.items()):
            if not live.is_stored and not live.connections and live.created < cutoff:
                del self._live[session_id]

    def get_live(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    @property
    def num_live(self) -> int:
        return len(self._live)

    async def terminate(self, session_id: str) -> None:
        """The session is being deleted: stop its turn, tell and disconnect its clients."""
        live = self._live.get(session_id)
        if live is None:
            return
        live.is_deleted = True
        await asyncio.gather(*(conn.terminate("session_deleted", "this session was deleted by an operator")
                               for conn in list(live.connections)))
