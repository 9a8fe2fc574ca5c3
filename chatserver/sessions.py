"""Chat sessions as the server sees them: credentials, the live transcript, one turn at a time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from chatserver.auth import hash_token, new_resume_token, new_session_id, token_matches
from chatserver.errors import SessionNotFound, Unauthorized
from engine.chat_format import ChatMessage
from storage.sessions import SessionRepository


@dataclass(eq=False)
class LiveSession:
    """A session with at least one connection. `is_busy` is set synchronously when a turn is
    accepted, before any await, so a second turn from any connection is refused."""

    id: str
    messages: list[ChatMessage]  # transcript as stored, in order
    pending_system: str | None = None  # system prompt sent before the first turn, stored with it
    is_busy: bool = False
    is_deleted: bool = False  # by an operator: nothing more is stored or accepted
    connections: set = field(default_factory=set)  # chatserver.ws.Connection

    @property
    def has_turns(self) -> bool:
        return any(m.role == "user" for m in self.messages)


class SessionManager:
    def __init__(self, repository: SessionRepository, model_name: str, on_idle=None):
        """on_idle(session_id): called when a session's last connection leaves and no turn runs."""
        self._repo = repository
        self._model_name = model_name
        self._on_idle = on_idle
        self._live: dict[str, LiveSession] = {}

    async def create(self) -> tuple[LiveSession, str]:
        session_id, token = new_session_id(), new_resume_token()
        await self._repo.create(session_id, hash_token(token), self._model_name)
        live = self._live.setdefault(session_id, LiveSession(session_id, []))
        return live, token

    async def resume(self, session_id: str, token: str | None) -> LiveSession:
        record = await self._repo.get(session_id)
        if record is None:
            raise SessionNotFound(f"no session {session_id!r}")
        if token is None or not token_matches(token, record.token_hash):
            raise Unauthorized("wrong or missing resume_token for this session")
        live = self._live.get(session_id)
        if live is not None and live.is_deleted:
            raise SessionNotFound(f"no session {session_id!r}")
        if live is None:
            stored = await self._repo.messages(session_id)
            # another connection may have loaded it while we awaited
            live = self._live.setdefault(session_id, LiveSession(session_id, [ChatMessage(m.role, m.content) for m in stored]))
        return live

    def attach(self, live: LiveSession, connection: object) -> None:
        live.connections.add(connection)
        self._live[live.id] = live

    def detach(self, live: LiveSession, connection: object) -> None:
        live.connections.discard(connection)
        self.forget_if_idle(live)

    def forget_if_idle(self, live: LiveSession) -> None:
        if not live.connections and not live.is_busy and self._live.get(live.id) is live:
            del self._live[live.id]
            if self._on_idle is not None:
                self._on_idle(live.id)

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
