"""Storage: migrations build the schema; sessions and transcripts round-trip; deletes cascade."""

import asyncio
import sqlite3
import subprocess
import sys

import pytest

from alembic import command
from alembic.script import ScriptDirectory
from storage import StorageUnavailable, TranscriptStore, create_db_engine, db_sessionmaker, upgrade
from storage.migrations import alembic_config
from tests.helpers.database import backend, sql, start_postgres, stop_postgres, table_names

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()  # the newest revision


@pytest.fixture
async def repo(database_url):
    await asyncio.to_thread(upgrade, database_url)  # alembic runs its own event loop
    db_engine = create_db_engine(database_url)
    yield TranscriptStore(db_sessionmaker(db_engine))
    await db_engine.dispose()


def test_migration_creates_the_schema_and_is_idempotent(database_url):
    upgrade(database_url)
    upgrade(database_url)  # already at head: nothing to do
    assert {"sessions", "messages", "turn_drafts", "alembic_version"} <= table_names(database_url)
    assert sql(database_url, "select version_num from alembic_version") == [(HEAD,)]


@pytest.mark.skipif(backend() != "sqlite", reason="SQLite's journal")
def test_sqlite_runs_in_wal_mode(database_url, tmp_path):
    upgrade(database_url)
    assert sqlite3.connect(tmp_path / "chat.db").execute("pragma journal_mode").fetchone() == ("wal",)


async def test_messages_keep_their_order_and_usage(repo):
    await repo.create("s1", "h" * 64, "model-x")
    await repo.add_message("s1", "user", "hello", title="hello", num_tokens=1)
    await repo.add_message("s1", "assistant", "hi!", finish_reason="stop", prompt_tokens=10, cached_tokens=0,
                           session_tokens=13)
    await repo.add_message("s1", "user", "again", title="ignored: already titled")
    messages = await repo.messages("s1")
    assert [(m.seq, m.role, m.content) for m in messages] == [(0, "user", "hello"), (1, "assistant", "hi!"), (2, "user", "again")]
    record = await repo.get("s1")
    assert record.title == "hello" and record.num_tokens == 13 and record.model == "model-x"
    assert record.updated_at >= record.created_at


async def test_foreign_keys_are_enforced_and_delete_cascades(repo, database_url):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        await repo.add_message("no-such-session", "user", "x")
    await repo.create("s2", "h" * 64, "m")
    await repo.add_message("s2", "user", "x")
    assert await repo.delete("s2") is True
    assert await repo.get("s2") is None
    assert sql(database_url, "select count(*) from messages where session_id = 's2'") == [(0,)]
    assert await repo.delete("s2") is False


async def test_a_database_that_refuses_raises_storage_unavailable(tmp_path):
    """Locked, read-only, full or unreachable: the store's one typed error, whatever the driver said."""
    from sqlalchemy.exc import OperationalError

    class Refusing:
        def __call__(self):
            raise OperationalError("SELECT", {}, Exception("database is locked"))

        begin = __call__

    store = TranscriptStore(Refusing())
    for call in (store.get("s"), store.messages("s"), store.add_message("s", "user", "x"), store.ping()):
        with pytest.raises(StorageUnavailable, match="database is locked"):
            await call


async def test_a_postgresql_that_refuses_raises_storage_unavailable_and_a_bug_stays_a_bug():
    """asyncpg reports a server shutting down (SQLSTATE 57P01) or a full disk (53100) as a generic DBAPIError;
    an error in the statement (42601) is no refusal."""
    from sqlalchemy.exc import DBAPIError

    class PgError(Exception):
        def __init__(self, sqlstate: str):
            super().__init__(f"sqlstate {sqlstate}")
            self.sqlstate = sqlstate

    def failing(sqlstate: str):
        def sessionmaker():
            raise DBAPIError("SELECT", {}, PgError(sqlstate))
        return sessionmaker

    for sqlstate in ("57P01", "53100", "08006", "40001"):
        with pytest.raises(StorageUnavailable, match=sqlstate):
            await TranscriptStore(failing(sqlstate)).ping()
    with pytest.raises(DBAPIError, match="42601"):
        await TranscriptStore(failing("42601")).ping()


async def test_an_unreachable_postgresql_raises_storage_unavailable(unused_tcp_port):
    db_engine = create_db_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{unused_tcp_port}/nothing")
    try:
        with pytest.raises(StorageUnavailable):
            await TranscriptStore(db_sessionmaker(db_engine)).ping()
    finally:
        await db_engine.dispose()


async def test_user_messages_left_unanswered_are_answered_once_with_the_given_reason(repo):
    for sid in ("answered", "unanswered", "empty"):
        await repo.create(sid, "h" * 64, "m")
    await repo.add_message("answered", "user", "q")
    await repo.add_message("answered", "assistant", "a", finish_reason="stop")
    await repo.add_message("unanswered", "user", "q1")
    await repo.add_message("unanswered", "assistant", "a1", finish_reason="stop")
    await repo.add_message("unanswered", "user", "q2")
    assert await repo.close_unanswered("interrupted") == ["unanswered"]
    assert [(m.role, m.content, m.finish_reason) for m in await repo.messages("unanswered")] == [
        ("user", "q1", None), ("assistant", "a1", "stop"), ("user", "q2", None), ("assistant", "", "interrupted")]
    assert [m.content for m in await repo.messages("answered")] == ["q", "a"]
    assert await repo.messages("empty") == []
    assert await repo.close_unanswered("interrupted") == []  # nothing left to answer


def test_every_migration_goes_down_and_up_again(database_url):
    upgrade(database_url)
    command.downgrade(alembic_config(database_url), "base")
    assert table_names(database_url) == {"alembic_version"}
    upgrade(database_url)
    assert {"sessions", "messages", "turn_drafts"} <= table_names(database_url)
    assert sql(database_url, "select version_num from alembic_version") == [(HEAD,)]


async def test_messages_added_at_once_to_one_session_each_get_their_own_place(repo, database_url):
    """Writers that do not wait for each other (two connections, two servers): every message is stored,
    in a seq of its own, after the one that was the active leaf when it was stored."""
    await repo.create("s", "h" * 64, "m")
    other_engine = create_db_engine(database_url)
    other = TranscriptStore(db_sessionmaker(other_engine))
    try:
        stored = await asyncio.gather(*(store.add_message("s", "user", f"m{i}")
                                        for i in range(12) for store in (repo, other)))
    finally:
        await other_engine.dispose()
    conversation = await repo.conversation("s")
    assert sorted(m.seq for m in conversation.messages) == list(range(24))
    assert len(conversation.path()) == 24  # one chain: each message followed the leaf before it
    assert {m.id for m in stored} == {m.id for m in conversation.messages}


@pytest.mark.skipif(backend() != "postgresql", reason="servers share one database on PostgreSQL only")
def test_servers_starting_at_once_migrate_the_database_once(database_url):
    """Separate processes, as servers are (alembic's context is one per process)."""
    code = "import sys; from storage import upgrade; upgrade(sys.argv[1])"
    processes = [subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    assert sql(database_url, "select version_num from alembic_version") == [(HEAD,)]


@pytest.mark.skipif(backend() != "postgresql", reason="restarts the PostgreSQL server")
async def test_a_postgresql_restart_refuses_while_down_and_the_store_goes_on_after(repo):
    await repo.create("s", "h" * 64, "m")
    await repo.add_message("s", "user", "before")
    stop_postgres()
    try:
        for call in (repo.ping(), repo.add_message("s", "user", "while down"), repo.get("s")):
            with pytest.raises(StorageUnavailable):
                await call
    finally:
        start_postgres()
    await repo.add_message("s", "user", "after")  # the pool's dead connections are replaced
    assert [m.content for m in await repo.messages("s")] == ["before", "after"]
