"""Ownership of sessions by replicas (storage/leases.py): one owner at a time, a lease taken once free,
released or expired, and fencing: a replica whose lease was taken writes nothing more."""

import asyncio

import pytest

from storage import TranscriptStore, create_db_engine, db_sessionmaker, upgrade
from storage.fencing import Lease, LeaseLost, fence
from storage.leases import AdvisoryLocks, Held, Leases
from tests.helpers.database import backend


@pytest.fixture
async def db(database_url):
    await asyncio.to_thread(upgrade, database_url)
    engines, replicas = [], []

    def replica(name: str, ttl: float = 30.0, locks: bool = False) -> Leases:
        engine = create_db_engine(database_url)
        engines.append(engine)
        replicas.append(Leases(db_sessionmaker(engine), name, ttl, AdvisoryLocks(engine) if locks else None))
        return replicas[-1]

    engine = create_db_engine(database_url)
    engines.append(engine)
    store = TranscriptStore(db_sessionmaker(engine))
    await store.create("s", "h" * 64, "m")
    yield store, replica, db_sessionmaker(engine)
    for r in replicas:
        await r.close()
    for e in engines:
        await e.dispose()


async def test_one_owner_at_a_time_and_renewal_keeps_the_epoch(db):
    _, replica, _ = db
    a, b = replica("r1"), replica("r2")
    first = await a.acquire("s")
    assert first == Lease("s", "r1", 1)
    held = await b.acquire("s")
    assert isinstance(held, Held) and held.owner == "r1"
    assert await a.acquire("s") == first  # renewed, same epoch
    assert await a.renew([first]) == []


async def test_a_released_or_expired_lease_is_taken_with_a_new_epoch(db):
    _, replica, _ = db
    a, b = replica("r1", ttl=0.2), replica("r2")
    lease = await a.acquire("s")
    await a.release(lease)
    taken = await b.acquire("s")
    assert taken == Lease("s", "r2", 2)
    assert await a.renew([lease]) == [lease]  # a's old lease is lost
    await b.release(taken)
    lease = await a.acquire("s")
    assert lease.epoch == 3
    await asyncio.sleep(0.3)  # a stops renewing (paused, partitioned): its lease runs out
    assert (await b.acquire("s")).epoch == 4


async def test_a_commit_under_a_lost_lease_is_refused_and_writes_nothing(db):
    store, replica, sm = db
    a, b = replica("r1", ttl=0.1), replica("r2")
    stale = await a.acquire("s")
    await asyncio.sleep(0.2)
    await b.acquire("s")  # r1 was paused past its lease: r2 took the session
    with pytest.raises(LeaseLost):
        async with sm.begin() as session:
            await fence(session, stale)
            await store.add_message("s", "user", "written by a stale owner")  # not reached
    assert await store.messages("s") == []


async def test_two_replicas_opening_a_session_at_once_leave_one_owner(db):
    _, replica, _ = db
    await db[0].create("t", "h" * 64, "m")
    results = await asyncio.gather(*(replica(f"r{i}").acquire("t") for i in range(6)))
    owners = [r for r in results if isinstance(r, Lease)]
    assert len(owners) == 1 and all(r.owner == owners[0].owner for r in results if isinstance(r, Held))


@pytest.mark.skipif(backend() != "postgresql", reason="advisory locks are PostgreSQL's (SQLite: one server)")
async def test_a_dead_owners_sessions_are_taken_at_once_through_its_advisory_locks(db):
    _, replica, _ = db
    a, b = replica("r1", locks=True), replica("r2", locks=True)
    await a.acquire("s")
    assert isinstance(await b.acquire("s"), Held)  # r1 is alive: its connection holds the lock
    await a._locks.close()  # r1's connection dies (a crash closes it the same way)
    assert (await b.acquire("s")) == Lease("s", "r2", 2)  # long before r1's 30 s lease runs out
