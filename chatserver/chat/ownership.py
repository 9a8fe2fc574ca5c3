"""Which sessions this replica of a cluster serves (docs/SCALING.md): a lease per live session, taken when
a connection opens it (or its first turn stores it), renewed while it is live, given up when it goes idle
or the server stops. A session whose lease another live replica holds is refused (SessionElsewhere); one
whose lease this replica lost (it was paused past its lease, and another took the session) is closed
on every connection here (`session_moved`), and its commits are refused by their fence.

Only in a cluster (--replica-name): a single server owns every session and takes no lease. Event loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from datetime import datetime, timezone

from chatserver.errors import SessionElsewhere
from storage import Held, Lease, Leases, StorageError

log = logging.getLogger(__name__)


class Ownership:
    def __init__(self, leases: Leases):
        self.leases = leases
        self.replica = leases.replica
        self._held: dict[str, Lease] = {}
        self._lost: dict[str, Lease] = {}  # leases taken by another replica: what is still written under them is refused
        self._lock = asyncio.Lock()  # one lease change at a time: a release never undoes a claim made meanwhile
        self._renewer: asyncio.Task | None = None
        # set by LiveSessions: on_lost(session_id) closes the session here; is_live(session_id)
        self.on_lost: Callable[[str], Awaitable[None]] | None = None
        self.is_live: Callable[[str], bool] = lambda session_id: False

    def lease_of(self, session_id: str) -> Lease | None:
        """The lease the session is written under here: held, or lost (a write under it is refused). None
        only for a session this replica never claimed."""
        return self._held.get(session_id) or self._lost.get(session_id)

    async def claim(self, session_id: str) -> Lease:
        """This replica's lease of the session: renewed, or taken (free, released, expired, or its owner
        dead); SessionElsewhere while another live replica holds it."""
        async with self._lock:
            got = await self.leases.acquire(session_id)
        if isinstance(got, Held):
            wait = max(1.0, (got.expires_at - datetime.now(timezone.utc)).total_seconds())
            raise SessionElsewhere(f"replica {got.owner!r} serves this session", got.owner, retry_after=wait)
        self._held[session_id] = got
        self._lost.pop(session_id, None)
        self._start_renewing()
        return got

    async def let_go(self, session_id: str) -> None:
        """The session is idle here (no connection, no turn): another replica may take it at once."""
        async with self._lock:
            if self.is_live(session_id):  # opened again meanwhile: kept
                return
            self._lost.pop(session_id, None)
            lease = self._held.pop(session_id, None)
            if lease is not None:
                try:
                    await self.leases.release(lease)
                except StorageError as exc:  # it expires instead
                    log.warning("could not release session %s: %s", session_id, exc)

    async def stop(self) -> None:
        """Shutdown: every session goes (after the turns ended)."""
        if self._renewer is not None:
            self._renewer.cancel()
        self.is_live = lambda session_id: False
        for session_id in list(self._held):
            await self.let_go(session_id)
        await self.leases.close()

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        period = self.leases.ttl.total_seconds() / 3
        while self._held:
            await asyncio.sleep(period)
            try:
                async with self._lock:
                    lost = await self.leases.renew(list(self._held.values()))
            except StorageError as exc:  # the leases run out unless the next renewal gets through
                log.warning("could not renew %d session leases: %s", len(self._held), exc)
                continue
            for lease in lost:
                if self._held.get(lease.session_id) == lease:
                    del self._held[lease.session_id]
                    self._lost[lease.session_id] = lease
                    log.warning("session %s: lease lost; another replica serves it now", lease.session_id)
                    try:  # changes no row (another owner's now); lets its advisory lock go (PostgreSQL)
                        await self.leases.release(lease)
                    except StorageError:
                        pass
                    if self.on_lost is not None:
                        await self.on_lost(lease.session_id)

