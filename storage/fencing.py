"""A replica's lease of a session, as every commit of a turn names it (storage/leases.py takes and renews
leases): fence() refuses a write under a lease another replica has taken since."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.errors import StorageError
from storage.tables import SessionLeaseRow


class LeaseLost(StorageError):
    """This replica no longer owns the session (another took it): nothing was written."""

    code = "session_moved"


@dataclass(frozen=True)
class Lease:
    session_id: str
    owner: str  # the replica's name
    epoch: int  # grows by one whenever another replica takes the session


async def fence(db: AsyncSession, lease: Lease) -> None:
    """In a write transaction, before its writes: raise LeaseLost unless `lease` still holds the session.
    Locks the lease row until the transaction ends, so a takeover waits for this commit, or this commit
    sees the takeover (PostgreSQL; SQLite serializes writers)."""
    result = await db.execute(
        update(SessionLeaseRow)
        .where(SessionLeaseRow.session_id == lease.session_id, SessionLeaseRow.owner == lease.owner,
               SessionLeaseRow.epoch == lease.epoch)
        .values(epoch=SessionLeaseRow.epoch))
    if result.rowcount != 1:
        raise LeaseLost(f"session {lease.session_id} is served by another replica now")
