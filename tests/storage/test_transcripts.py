"""Storage: migrations build the schema; sessions and transcripts round-trip; deletes cascade."""

import asyncio
import sqlite3

import pytest

from storage import StorageUnavailable, TranscriptStore, create_db_engine, db_sessionmaker, sqlite_url, upgrade


@pytest.fixture
async def repo(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
    db_engine = create_db_engine(url)
    yield TranscriptStore(db_sessionmaker(db_engine))
    await db_engine.dispose()


def test_migration_creates_the_schema_and_is_idempotent(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    upgrade(url)
    upgrade(url)  # already at head: nothing to do
    db = sqlite3.connect(tmp_path / "chat.db")
    tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"sessions", "messages", "turn_drafts", "alembic_version"} <= tables
    assert db.execute("select version_num from alembic_version").fetchone() == ("0003",)
    assert db.execute("pragma journal_mode").fetchone() == ("wal",)


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


async def test_foreign_keys_are_enforced_and_delete_cascades(repo, tmp_path):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        await repo.add_message("no-such-session", "user", "x")
    await repo.create("s2", "h" * 64, "m")
    await repo.add_message("s2", "user", "x")
    assert await repo.delete("s2") is True
    assert await repo.get("s2") is None
    db = sqlite3.connect(tmp_path / "chat.db")
    assert db.execute("select count(*) from messages where session_id='s2'").fetchone() == (0,)
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
