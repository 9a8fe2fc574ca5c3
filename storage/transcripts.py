"""Chat sessions and their transcripts (trees of messages, storage/conversation.py) in SQL (SQLite or
PostgreSQL), with the draft of each running turn's answer. Each method is one short transaction; a database
that refuses (locked, disk full, unreachable, restarting) raises StorageUnavailable, and nothing of that call
is kept. Writers need not take turns: messages added at once to one session (two connections, two servers)
each get their own place."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.conversation import Conversation, StoredMessage
from storage.errors import StorageUnavailable
from storage.fencing import Lease, fence
from storage.tables import MessageRow, SessionRow, TurnDraftRow, utcnow

_ACTIVE_LEAF = object()  # add_message's default parent: the session's active leaf
# SQLSTATE classes of a PostgreSQL that refuses for now: connection exception, transaction rollback
# (serialization, deadlock), insufficient resources (disk full, too many connections), operator
# intervention (shutdown, restart)
_REFUSING_SQLSTATES = ("08", "40", "53", "57")
_PLACE_ATTEMPTS = 32  # add_message: tries at a seq that writers at once to the same session may take first


@dataclass(frozen=True)
class SessionRecord:
    id: str
    token_hash: str
    title: str | None
    model: str
    num_tokens: int
    created_at: datetime
    updated_at: datetime
    num_messages: int = 0


def _refusals_typed(method):
    """A database that refuses (locked, read-only, disk full, unreachable, no free connection) raises
    StorageUnavailable; other database errors (a broken constraint) are bugs and stay what they are."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except (OperationalError, InterfaceError, DisconnectionError, PoolTimeout, OSError) as exc:
            raise StorageUnavailable(f"the database refused: {type(exc).__name__}: {exc}") from exc
        except DBAPIError as exc:  # asyncpg's errors other than constraints arrive as the generic class
            sqlstate = getattr(exc.orig, "sqlstate", None) or ""
            if exc.connection_invalidated or sqlstate[:2] in _REFUSING_SQLSTATES:
                raise StorageUnavailable(f"the database refused: {type(exc).__name__}: {exc}") from exc
            raise

    return wrapper


class TranscriptStore:
    def __init__(self, sessionmaker: async_sessionmaker):
        self._sm = sessionmaker

    @_refusals_typed
    async def create(self, session_id: str, token_hash: str, model: str) -> SessionRecord:
        now = utcnow()
        row = SessionRow(id=session_id, token_hash=token_hash, model=model, num_tokens=0, created_at=now, updated_at=now)
        async with self._sm.begin() as db:
            db.add(row)
        return _record(row)

    @_refusals_typed
    async def get(self, session_id: str) -> SessionRecord | None:
        async with self._sm() as db:
            row = await db.get(SessionRow, session_id)
            if row is None:
                return None
            count = await db.scalar(select(func.count()).select_from(MessageRow).where(MessageRow.session_id == session_id))
            return _record(row, count)

    @_refusals_typed
    async def list_page(self, limit: int, after: tuple[datetime, str] | None = None) -> list[SessionRecord]:
        """Most recently updated first; `after` = (updated_at, id) of the previous page's last row."""
        counts = (select(MessageRow.session_id, func.count().label("n")).group_by(MessageRow.session_id).subquery())
        query = (select(SessionRow, func.coalesce(counts.c.n, 0))
                 .outerjoin(counts, counts.c.session_id == SessionRow.id)
                 .order_by(SessionRow.updated_at.desc(), SessionRow.id.desc()).limit(limit))
        if after is not None:
            updated, last_id = after
            query = query.where((SessionRow.updated_at < updated)
                                | ((SessionRow.updated_at == updated) & (SessionRow.id < last_id)))
        async with self._sm() as db:
            return [_record(row, n) for row, n in (await db.execute(query)).all()]

    @_refusals_typed
    async def ping(self) -> None:
        """Raises if the database cannot be reached."""
        async with self._sm() as db:
            await db.execute(select(1))

    @_refusals_typed
    async def conversation(self, session_id: str) -> Conversation:
        """Every message of the session (all branches, oldest first) and its active leaf."""
        async with self._sm() as db:
            leaf = await db.scalar(select(SessionRow.active_leaf_id).where(SessionRow.id == session_id))
            rows = await db.scalars(select(MessageRow).where(MessageRow.session_id == session_id).order_by(MessageRow.seq))
            return Conversation([_message(m) for m in rows], leaf)

    async def messages(self, session_id: str) -> list[StoredMessage]:
        """The active path, oldest first."""
        return (await self.conversation(session_id)).path()

    @_refusals_typed
    async def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        num_tokens: int | None = None,
        prompt_tokens: int | None = None,
        cached_tokens: int | None = None,
        finish_reason: str | None = None,
        session_tokens: int | None = None,
        title: str | None = None,
        parent_id=_ACTIVE_LEAF,
        lease: Lease | None = None,
    ) -> StoredMessage:
        """Add a message after parent_id (default: the active leaf; None: as the first message), make it the
        active leaf and touch the session; `title` is set only if the session has none. The parent must be
        a message of this session (the caller checks). An assistant message is the answer of the session's
        turn: the turn's draft (save_draft) goes in the same transaction. lease: in a cluster, the lease this
        replica writes the session under; LeaseLost (nothing written) once another replica has taken it."""
        for _ in range(_PLACE_ATTEMPTS):
            seq = None
            try:
                async with self._sm.begin() as db:
                    if lease is not None:
                        await fence(db, lease)
                    leaf, seq = await _next_place(db, session_id)
                    row = MessageRow(
                        session_id=session_id, seq=seq, parent_id=leaf if parent_id is _ACTIVE_LEAF else parent_id,
                        role=role, content=content, num_tokens=num_tokens, prompt_tokens=prompt_tokens,
                        cached_tokens=cached_tokens, finish_reason=finish_reason, created_at=utcnow(),
                    )
                    db.add(row)
                    await db.flush()  # assigns row.id
                    values: dict = {"updated_at": row.created_at, "active_leaf_id": row.id}
                    if session_tokens is not None:
                        values["num_tokens"] = session_tokens
                    await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))
                    if title:
                        await db.execute(update(SessionRow).values(title=title)
                                         .where(SessionRow.id == session_id, SessionRow.title.is_(None)))
                    if role == "assistant":
                        await db.execute(delete(TurnDraftRow).where(TurnDraftRow.session_id == session_id))
                    return _message(row)
            except IntegrityError:
                if seq is None or not await self._seq_taken(session_id, seq):
                    raise  # not a race for the place: no such session or parent
        raise StorageUnavailable(f"session {session_id}: {_PLACE_ATTEMPTS} writers at once took every place tried")

    async def _seq_taken(self, session_id: str, seq: int) -> bool:
        async with self._sm() as db:
            return await db.scalar(select(func.count()).select_from(MessageRow)
                                   .where(MessageRow.session_id == session_id, MessageRow.seq == seq)) > 0

    @_refusals_typed
    async def save_draft(self, session_id: str, parent_id: int, content: str, lease: Lease | None = None) -> None:
        """Checkpoint the answer of the session's running turn: `content` is the whole answer so far, to user
        message `parent_id` of this stored session; it replaces the session's earlier draft. What a process
        killed mid-turn leaves of the answer (close_unanswered). The draft goes with the answer stored
        (add_message), the session, or the next start; a turn that ends without storing its answer leaves
        it to be replaced by the next turn's."""
        values = {"parent_id": parent_id, "content": content, "updated_at": utcnow()}
        async with self._sm.begin() as db:
            if lease is not None:
                await fence(db, lease)
            insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
            await db.execute(insert(TurnDraftRow).values(session_id=session_id, **values)
                             .on_conflict_do_update(index_elements=[TurnDraftRow.session_id], set_=values))

    @_refusals_typed
    async def draft(self, session_id: str) -> tuple[int, str] | None:
        """(parent_id, content) of the session's draft, or None."""
        async with self._sm() as db:
            row = await db.get(TurnDraftRow, session_id)
            return None if row is None else (row.parent_id, row.content)

    @_refusals_typed
    async def set_active_leaf(self, session_id: str, leaf_id: int, lease: Lease | None = None) -> bool:
        """Make the path to leaf_id (a message of this session) the active one; False if there is no such
        session. lease: as add_message's."""
        async with self._sm.begin() as db:
            if lease is not None:
                await fence(db, lease)
            result = await db.execute(update(SessionRow).where(SessionRow.id == session_id)
                                      .values(active_leaf_id=leaf_id))
            return result.rowcount > 0

    @_refusals_typed
    async def close_unanswered(self, finish_reason: str, session_id: str | None = None,
                               lease: Lease | None = None) -> list[str]:
        """Answer every session (or just `session_id`) whose active leaf is a user message (its turn was never
        stored: the process died) with an assistant message ending with `finish_reason`: the draft of that
        turn's answer (save_draft), or empty without one. Then every draft (of that session) goes. Call only
        while no turn of those sessions runs: at start-up, or (a cluster) when a replica takes a session
        whose owner died (`lease`: the taker's, as add_message's). Returns the answered sessions' ids."""
        query = (select(MessageRow.session_id, MessageRow.id, TurnDraftRow.content)
                 .join(SessionRow, SessionRow.active_leaf_id == MessageRow.id)
                 .outerjoin(TurnDraftRow, (TurnDraftRow.session_id == MessageRow.session_id)
                            & (TurnDraftRow.parent_id == MessageRow.id))
                 .where(MessageRow.role == "user"))
        drafts = delete(TurnDraftRow)
        if session_id is not None:
            query = query.where(MessageRow.session_id == session_id)
            drafts = drafts.where(TurnDraftRow.session_id == session_id)
        now = utcnow()
        async with self._sm.begin() as db:
            if lease is not None:
                await fence(db, lease)
            rows = (await db.execute(query)).all()
            for sid, leaf_id, draft in rows:
                _, seq = await _next_place(db, sid)
                row = MessageRow(session_id=sid, seq=seq, parent_id=leaf_id, role="assistant",
                                 content=draft or "", finish_reason=finish_reason, created_at=now)
                db.add(row)
                await db.flush()
                await db.execute(update(SessionRow).where(SessionRow.id == sid).values(active_leaf_id=row.id))
            await db.execute(drafts)
        return [answered for answered, _, _ in rows]

    @_refusals_typed
    async def rename(self, session_id: str, title: str) -> bool:
        """Set the session's title; False if there is no such session."""
        async with self._sm.begin() as db:
            result = await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(title=title))
            return result.rowcount > 0

    @_refusals_typed
    async def delete(self, session_id: str) -> bool:
        async with self._sm.begin() as db:
            result = await db.execute(delete(SessionRow).where(SessionRow.id == session_id))
            return result.rowcount > 0


async def _next_place(db: AsyncSession, session_id: str) -> tuple[int | None, int]:
    """(active leaf, next free seq) of the session, read at one moment. On PostgreSQL the session's row
    is locked first (FOR NO KEY UPDATE, to the transaction's end): writers to one session take turns,
    and the read, a statement after the lock, sees the last one's message. SQLite has no row locks: two
    writers may read the same place, and the second's insert breaks the (session_id, seq) constraint."""
    await db.execute(select(SessionRow.id).where(SessionRow.id == session_id).with_for_update(key_share=True))
    next_seq = (select(func.coalesce(func.max(MessageRow.seq) + 1, 0)).where(MessageRow.session_id == session_id)
                .scalar_subquery())
    place = (await db.execute(select(SessionRow.active_leaf_id, next_seq).where(SessionRow.id == session_id))).first()
    return (None, 0) if place is None else (place[0], place[1])


def _message(m: MessageRow) -> StoredMessage:
    return StoredMessage(m.id, m.parent_id, m.seq, m.role, m.content, m.finish_reason, _utc(m.created_at))


def _record(row: SessionRow, num_messages: int = 0) -> SessionRecord:
    return SessionRecord(row.id, row.token_hash, row.title, row.model, row.num_tokens, _utc(row.created_at),
                         _utc(row.updated_at), num_messages)


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything stored is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
