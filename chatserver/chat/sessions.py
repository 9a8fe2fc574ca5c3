"""Chat sessions as the server sees them: credentials, the live transcript, one turn at a time, and the
connections that follow it. A turn belongs to its session, not to the connection that started it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from chatserver.chat.credentials import hash_token, new_resume_token, new_session_id, token_matches
from chatserver.chat.turn_log import TurnLog
from chatserver.errors import SessionNotFound, Unauthorized
from engine import TurnEvent
from storage import Conversation, TranscriptStore

if TYPE_CHECKING:
    from chatserver.chat.ownership import Ownership
    from chatserver.engine_client import TurnStream

log = logging.getLogger(__name__)


class SessionListener(Protocol):
    """A connection attached to a live session (chat/websocket.py). The on_* calls come from the event
    loop and must not block: a listener queues what it sends."""

    def on_turn_started(self, turn: TurnLog) -> None:
        """A turn started from another connection of the session."""

    def on_turn_event(self, turn: TurnLog, seq: int, event: TurnEvent) -> None:
        """The turn streamed event number `seq` (seq 0, 1, 2... with no gap per listener and turn)."""

    def on_path_changed(self, conversation: Conversation, turn: TurnLog | None) -> None:
        """The active path changed (regenerate or edit: `turn` answers its last message; switch: None)."""

    async def terminate(self, code: str, message: str) -> None:
        """The session is gone: say why and close."""


@dataclass(eq=False)
class LiveSession:
    """A session with at least one connection or a running turn. `is_busy` is set synchronously when a
    turn is accepted, before any await, so a second turn from any connection is refused.

    `lock` is held while the stored transcript and `log` change together (a turn's user message stored
    and its log started; its answer stored and its log finished) and while a connection reads the
    transcript and attaches: what it is sent then agrees with the log it follows."""

    id: str
    token_hash: str
    conversation: Conversation  # the transcript as stored: every branch, and the active path
    is_stored: bool = True  # False until its first turn: a hello alone writes nothing to the database
    created: float = field(default_factory=time.monotonic)
    pending_system: str | None = None  # system prompt sent before the first turn, stored with it
    is_busy: bool = False
    is_deleted: bool = False  # by an operator or its owner: nothing more is stored or accepted
    connections: set[SessionListener] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    log: TurnLog | None = None  # the running turn's, else the last finished turn's until the next starts
    stream: TurnStream | None = None  # the running turn's engine stream
    turn_task: asyncio.Task | None = None  # streams `stream` into `log` (chat/service.py)
    detach_timer: asyncio.TimerHandle | None = None  # cancels the running turn: nobody is connected
    # the branch (named by its leaf message id) the session's KV holds; a turn that starts elsewhere tells
    # the engine, which keeps that KV as a branch of its own (engine/kv/branches.py)
    kv_branch: str = ""

    def __post_init__(self) -> None:
        if not self.kv_branch and self.conversation.active_leaf_id is not None:
            self.kv_branch = str(self.conversation.active_leaf_id)

    @property
    def has_turns(self) -> bool:
        return self.conversation.has_user_message

    @property
    def is_turn_running(self) -> bool:
        return self.turn_task is not None and not self.turn_task.done()


_UNSTORED_GRACE_SECONDS = 3600.0  # an empty session can be resumed (e.g. after a dropped connection) this long


class LiveSessions:
    """The sessions with a connection or a running turn, by id (event loop only). A turn whose session has
    no connection runs on for `detached_turn_seconds`, then is cancelled; a finished turn's log stays with
    its session, and for `detached_turn_seconds` after the session has no connection and no turn left."""

    def __init__(self, transcripts: TranscriptStore, model_name: str, on_idle=None,
                 detached_turn_seconds: float = 120.0, ownership: Ownership | None = None):
        """on_idle(session_id): called when a session's last connection leaves and no turn runs.
        ownership: in a cluster, the leases of the sessions this replica serves (chat/ownership.py)."""
        self._repo = transcripts
        self._model_name = model_name
        self._on_idle = on_idle
        self.detached_turn_seconds = detached_turn_seconds
        self._live: dict[str, LiveSession] = {}
        self._parked: dict[str, tuple[float, TurnLog]] = {}  # logs of idle sessions: (monotonic expiry, log)
        self.ownership = ownership
        if ownership is not None:
            ownership.on_lost, ownership.is_live = self._lost, lambda session_id: session_id in self._live

    @property
    def replica(self) -> str | None:
        """This server's name in a cluster; None for a single server."""
        return self.ownership.replica if self.ownership is not None else None

    def lease_of(self, session_id: str):
        """The lease under which this replica writes the session (None: a single server)."""
        return self.ownership.lease_of(session_id) if self.ownership is not None else None

    def create(self) -> tuple[LiveSession, str]:
        """A new session, kept in memory until its first turn stores it (see store_if_new)."""
        self._purge_unstored()
        session_id, token = new_session_id(), new_resume_token()
        live = self._live[session_id] = LiveSession(session_id, hash_token(token), Conversation(), is_stored=False)
        return live, token

    async def store_if_new(self, live: LiveSession) -> None:
        if not live.is_stored:
            await self._repo.create(live.id, live.token_hash, self._model_name)
            live.is_stored = True
            if self.ownership is not None:
                await self.ownership.claim(live.id)

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
        lease = None
        if self.ownership is not None:  # another live replica serving it: SessionElsewhere
            lease = await self.ownership.claim(session_id)
        if live is None:
            conversation = await self._repo.conversation(session_id)
            last = conversation.get(conversation.active_leaf_id) if conversation.active_leaf_id else None
            if lease is not None and last is not None and last.role == "user" and session_id not in self._live:
                # taken from a replica that died mid-answer: its answer, as checkpointed, ends "interrupted"
                await self._repo.close_unanswered("interrupted", session_id, lease)
                conversation = await self._repo.conversation(session_id)
            live = self._live.get(session_id)  # another connection may have loaded it while we awaited
            if live is None:
                live = self._live[session_id] = LiveSession(session_id, token_hash, conversation,
                                                            log=self._unpark(session_id))
        return live

    def attach(self, live: LiveSession, connection: SessionListener) -> None:
        live.connections.add(connection)
        self._live[live.id] = live
        if live.detach_timer is not None:
            live.detach_timer.cancel()
            live.detach_timer = None

    def detach(self, live: LiveSession, connection: SessionListener) -> None:
        live.connections.discard(connection)
        if not live.connections and live.is_turn_running:
            self._arm_detach_timer(live)
        self.forget_if_idle(live)

    def turn_started(self, live: LiveSession) -> None:
        """live.turn_task runs: it may have started after its last connection left."""
        if not live.connections:
            self._arm_detach_timer(live)

    def turn_ended(self, live: LiveSession) -> None:
        if live.detach_timer is not None:
            live.detach_timer.cancel()
            live.detach_timer = None
        self.forget_if_idle(live)

    def _arm_detach_timer(self, live: LiveSession) -> None:
        if live.detach_timer is None:
            loop = asyncio.get_running_loop()
            live.detach_timer = loop.call_later(self.detached_turn_seconds, self._cancel_detached, live)

    def _cancel_detached(self, live: LiveSession) -> None:
        live.detach_timer = None
        if not live.connections and live.stream is not None:
            log.info("session %s: no connection for %.0f s, its turn is cancelled", live.id,
                     self.detached_turn_seconds)
            live.stream.cancel()  # its DoneEvent("cancelled") follows; the answer is stored as it stands

    def forget_if_idle(self, live: LiveSession) -> None:
        if not live.is_stored:
            return  # kept for a while by _purge_unstored, so that a reconnect can resume it
        if not live.connections and not live.is_busy and self._live.get(live.id) is live:
            del self._live[live.id]
            if live.log is not None and not live.is_deleted:
                self._park(live.id, live.log)
            if self._on_idle is not None:
                self._on_idle(live.id)
            if self.ownership is not None:
                asyncio.get_running_loop().create_task(self.ownership.let_go(live.id))

    def _park(self, session_id: str, turn_log: TurnLog) -> None:
        now = time.monotonic()
        for sid in [sid for sid, (expiry, _) in self._parked.items() if expiry < now]:
            del self._parked[sid]
        self._parked[session_id] = (now + self.detached_turn_seconds, turn_log)

    def _unpark(self, session_id: str) -> TurnLog | None:
        expiry, turn_log = self._parked.pop(session_id, (0.0, None))
        return turn_log if expiry >= time.monotonic() else None

    def _purge_unstored(self) -> None:
        cutoff = time.monotonic() - _UNSTORED_GRACE_SECONDS
        for session_id, live in list(self._live.items()):
            if not live.is_stored and not live.connections and live.created < cutoff:
                del self._live[session_id]

    @property
    def model_name(self) -> str:
        """The served model's name, as stored with each session."""
        return self._model_name

    def get_live(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    @property
    def num_live(self) -> int:
        return len(self._live)

    async def stop_turns(self) -> None:
        """Shutdown: cancel every running turn and wait until each answer is stored and its last frame sent
        to the connections' queues."""
        running = [live for live in self._live.values() if live.is_turn_running]
        for live in running:
            _cancel(live)
        await asyncio.gather(*(asyncio.shield(live.turn_task) for live in running), return_exceptions=True)

    async def stop(self, session_id: str) -> LiveSession | None:
        """The session is being deleted: nothing more is accepted or stored for it; its running turn is
        cancelled and has ended on return. Returns the live session (None if it has none)."""
        self._parked.pop(session_id, None)
        live = self._live.get(session_id)
        if live is None:
            return None
        live.is_deleted = True
        if live.is_turn_running:
            _cancel(live)
            await asyncio.gather(asyncio.shield(live.turn_task), return_exceptions=True)
        return live

    async def _lost(self, session_id: str) -> None:
        """Another replica took the session: its running turn here stops (its answer's commit is refused by
        the fence) and every connection here is told (`session_moved`) and closed; a client reconnecting
        through the balancer reaches the replica that serves it now."""
        self._parked.pop(session_id, None)
        live = self._live.pop(session_id, None)
        if live is None:
            return
        if live.is_turn_running:
            _cancel(live)
        await asyncio.gather(*(conn.terminate("session_moved", "another replica serves this session now")
                               for conn in list(live.connections)))

    async def disconnect(self, live: LiveSession, by: str) -> None:
        """Tell every connection of a deleted session (by: who deleted it) and close them."""
        await asyncio.gather(*(conn.terminate("session_deleted", f"this session was deleted by {by}")
                               for conn in list(live.connections)))


def _cancel(live: LiveSession) -> None:
    if live.stream is not None:  # None once the turn has ended and its task is storing nothing more
        live.stream.cancel()
