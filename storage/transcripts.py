"""Chat sessions and their transcripts in SQL. Each method is one short transaction; a database that
refuses (locked, disk full, unreachable) raises StorageUnavailable, and nothing of that call is kept."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import async_sessionmaker

from storage.errors import StorageUnavailable
from storage.tables import MessageRow, SessionRow, utcnow


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    role: str
    content: str
    finish_reason: str | None
    created_at: datetime


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
    async def messages(self, session_id: str) -> list[StoredMessage]:
        async with self._sm() as db:
            rows = await db.scalars(select(MessageRow).where(MessageRow.session_id == session_id).order_by(MessageRow.seq))
            return [StoredMessage(m.seq, m.role, m.content, m.finish_reason, m.created_at) for m in rows]

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
    ) -> None:
        """Append a message and touch the session; `title` is set only if the session has none."""
        now = utcnow()
        async with self._sm.begin() as db:
            seq = await db.scalar(select(func.coalesce(func.max(MessageRow.seq) + 1, 0)).where(MessageRow.session_id == session_id))
            db.add(MessageRow(
                session_id=session_id, seq=seq, role=role, content=content, num_tokens=num_tokens,
                prompt_tokens=prompt_tokens, cached_tokens=cached_tokens, finish_reason=finish_reason, created_at=now,
            ))
            values: dict = {"updated_at": now}
            if session_tokens is not None:
                values["num_tokens"] = session_tokens
            await db.execute(update(SessionRow).where(SessionRow.id == session_id).values(**values))
            if title:
                await db.execute(
                    update(SessionRow).where(SessionRow.id == session_id, SessionRow.title.is_(None)).values(title=title)
                )

    @_refusals_typed
    async def close_unanswered(self, finish_reason: str) -> list[str]:
        """Answer every session whose last message is a user's (its turn was never stored: the process
        died) with an empty assistant message ending with `finish_reason`; returns those sessions' ids."""
        last = (select(MessageRow.session_id, func.max(MessageRow.seq).label("seq"))
                .group_by(MessageRow.session_id).subquery())
        query = (select(MessageRow.session_id, MessageRow.seq)
                 .join(last, (MessageRow.session_id == last.c.session_id) & (MessageRow.seq == last.c.seq))
                 .where(MessageRow.role == "user"))
        now = utcnow()
        async with self._sm.begin() as db:
            rows = (await db.execute(query)).all()
            for session_id, seq in rows:
                db.add(MessageRow(session_id=session_id, seq=seq + 1, role="assistant", content="",
                                  finish_reason=finish_reason, created_at=now))
        return [session_id for session_id, _ in rows]

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


def _record(row: SessionRow, num_messages: int = 0) -> SessionRecord:
    return SessionRecord(row.id, row.token_hash, row.title, row.model, row.num_tokens, _utc(row.created_at),
                         _utc(row.updated_at), num_messages)


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything stored is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
