"""Ownership of sessions in a cluster: at most one replica serves a session at a time (docs/SCALING.md).

A replica takes a session with a lease (owner, epoch, expiry) by a conditional update: it renews a lease
it holds, or takes one that is free, released or expired, adding one to its epoch. Every commit of a turn
checks the epoch in its transaction (`fence`): the conditional update locks the lease row until commit
(PostgreSQL) or the database serializes writers (SQLite), so a replica that lost the session (paused,
partitioned, its lease taken) can write nothing more to it. Safety rests on the epoch, not on clocks;
expiry (the replica's clock) only decides when a silent owner's sessions become free.

On PostgreSQL a crashed replica's sessions become free at once: each owner also holds a session-level
advisory lock per session on a connection of its own (AdvisoryLocks), which PostgreSQL releases when that
connection dies; a replica that gets the advisory lock of a session whose lease has not expired knows its
owner is gone and takes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from storage.fencing import Lease
from storage.tables import SessionLeaseRow, utcnow
from storage.transcripts import _refusals_typed


@dataclass(frozen=True)
class Held:
    """The session is served by another live replica."""

    owner: str
    expires_at: datetime  # UTC


def lock_key(session_id: str) -> int:
    """The session's advisory-lock key: a signed 64-bit integer."""
    return int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:8], "big", signed=True)


class AdvisoryLocks:
    """PostgreSQL session-level advisory locks on one connection of this replica: one per owned session,
    released by PostgreSQL if the connection (the replica) dies. Event loop only, one call at a time."""

    def __init__(self, engine: AsyncEngine):
        # a connection of its own, never pooled: closing it (or the replica dying) releases every lock
        self._engine = create_async_engine(engine.url, poolclass=NullPool)
        self._conn: AsyncConnection | None = None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await self._engine.connect()
        return self._conn

    async def try_lock(self, session_id: str) -> bool:
        conn = await self._connection()
        result = await conn.exec_driver_sql("SELECT pg_try_advisory_lock($1)", (lock_key(session_id),))
        await conn.commit()
        return bool(result.scalar())

    async def unlock(self, session_id: str) -> None:
        conn = await self._connection()
        await conn.exec_driver_sql("SELECT pg_advisory_unlock($1)", (lock_key(session_id),))
        await conn.commit()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        await self._engine.dispose()


class Leases:
    def __init__(self, sessionmaker: async_sessionmaker, replica: str, ttl_seconds: float,
                 locks: AdvisoryLocks | None = None):
        self._sm = sessionmaker
        self.replica = replica
        self.ttl = timedelta(seconds=ttl_seconds)
        self._locks = locks

    @_refusals_typed
    async def acquire(self, session_id: str) -> Lease | Held:
        """Renew this replica's lease of the session, or take it if it is free, released, expired or its
        owner's advisory lock is gone (PostgreSQL); else Held by the live owner."""
        now = utcnow()
        async with self._sm.begin() as db:
            epoch = await self._renew(db, session_id, now)
            if epoch is not None:
                return Lease(session_id, self.replica, epoch)
            epoch = await self._take(db, session_id, now, only_free=True)
            if epoch is not None:
                await self._lock(session_id)
                return Lease(session_id, self.replica, epoch)
            row = await db.get(SessionLeaseRow, session_id)
        if row is None:
            try:
                async with self._sm.begin() as db:
                    db.add(SessionLeaseRow(session_id=session_id, owner=self.replica, epoch=1,
                                           expires_at=now + self.ttl))
                await self._lock(session_id)
                return Lease(session_id, self.replica, 1)
            except IntegrityError:  # another replica inserted it first (or the session does not exist)
                async with self._sm.begin() as db:
                    row = await db.get(SessionLeaseRow, session_id)
                if row is None:
                    raise
        if self._locks is not None and await self._locks.try_lock(session_id):
            async with self._sm.begin() as db:  # its owner's connection is gone: the owner is dead
                epoch = await self._take(db, session_id, now, only_free=False)
            if epoch is not None:
                return Lease(session_id, self.replica, epoch)
            await self._locks.unlock(session_id)
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)  # SQLite
        return Held(row.owner or "", expires)

    async def _renew(self, db: AsyncSession, session_id: str, now: datetime) -> int | None:
        result = await db.execute(
            update(SessionLeaseRow)
            .where(SessionLeaseRow.session_id == session_id, SessionLeaseRow.owner == self.replica,
                   SessionLeaseRow.expires_at > now)
            .values(expires_at=now + self.ttl).returning(SessionLeaseRow.epoch))
        return result.scalar()

    async def _take(self, db: AsyncSession, session_id: str, now: datetime, only_free: bool) -> int | None:
        free = or_(SessionLeaseRow.owner.is_(None), SessionLeaseRow.expires_at <= now)
        result = await db.execute(
            update(SessionLeaseRow)
            .where(SessionLeaseRow.session_id == session_id, *([free] if only_free else []))
            .values(owner=self.replica, epoch=SessionLeaseRow.epoch + 1, expires_at=now + self.ttl)
            .returning(SessionLeaseRow.epoch))
        return result.scalar()

    async def _lock(self, session_id: str) -> None:
        if self._locks is not None:
            await self._locks.try_lock(session_id)

    @_refusals_typed
    async def renew(self, leases: list[Lease]) -> list[Lease]:
        """Extend the leases still held (same owner and epoch); returns those lost."""
        if not leases:
            return []
        now = utcnow()
        held = or_(*[and_(SessionLeaseRow.session_id == lease.session_id, SessionLeaseRow.epoch == lease.epoch)
                     for lease in leases])
        async with self._sm.begin() as db:
            result = await db.execute(
                update(SessionLeaseRow).where(SessionLeaseRow.owner == self.replica, held)
                .values(expires_at=now + self.ttl).returning(SessionLeaseRow.session_id))
            kept = set(result.scalars())
        return [lease for lease in leases if lease.session_id not in kept]

    @_refusals_typed
    async def release(self, lease: Lease) -> None:
        """Give the session up (its last connection left, or shutdown): another replica may take it now."""
        async with self._sm.begin() as db:
            await db.execute(
                update(SessionLeaseRow)
                .where(SessionLeaseRow.session_id == lease.session_id, SessionLeaseRow.owner == self.replica,
                       SessionLeaseRow.epoch == lease.epoch)
                .values(owner=None, expires_at=utcnow()))
        if self._locks is not None:
            await self._locks.unlock(lease.session_id)

    async def close(self) -> None:
        """Shutdown, after the leases are released: the advisory locks' connection goes."""
        if self._locks is not None:
            await self._locks.close()

    async def owner_of(self, session_id: str) -> tuple[str | None, int]:
        """(owner or None, epoch) as stored now (admin, tests)."""
        async with self._sm() as db:
            row = (await db.execute(select(SessionLeaseRow).where(SessionLeaseRow.session_id == session_id))).scalar()
        return (row.owner, row.epoch) if row is not None else (None, 0)
