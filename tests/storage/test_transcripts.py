"""Storage: migrations build the schema; sessions and transcripts round-trip; deletes cascade."""

import asyncio
import sqlite3

import pytest

from storage import migrations
from storage.db import create_engine, sessionmaker, sqlite_url
from storage.transcripts import SessionRepository


@pytest.fixture
async def repo(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    await asyncio.to_thread(migrations.upgrade, url)  # alembic runs its own event loop
    engine = create_engine(url)
    yield SessionRepository(sessionmaker(engine))
    await engine.dispose()


def test_migration_creates_the_schema_and_is_idempotent(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    migrations.upgrade(url)
    migrations.upgrade(url)  # already at head: nothing to do
    db = sqlite3.connect(tmp_path / "chat.db")
    tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    assert {"sessions", "messages", "alembic_version"} <= tables
    assert db.execute("select version_num from alembic_version").fetchone() == ("0001",)
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
