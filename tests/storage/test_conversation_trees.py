"""Transcripts as trees: messages name their parent, the session its active leaf; the migration turns
transcripts stored before trees into single branches, and a downgrade keeps each active path."""

import asyncio

import pytest

from alembic import command
from storage import TranscriptStore, create_db_engine, db_sessionmaker, upgrade
from storage.migrations import alembic_config
from tests.helpers.database import sql


@pytest.fixture
async def repo(database_url):
    await asyncio.to_thread(upgrade, database_url)
    db_engine = create_db_engine(database_url)
    yield TranscriptStore(db_sessionmaker(db_engine))
    await db_engine.dispose()


async def test_a_regenerated_answer_and_an_edited_question_are_siblings_on_their_own_paths(repo):
    await repo.create("s", "h" * 64, "m")
    u1 = await repo.add_message("s", "user", "q1")
    a1 = await repo.add_message("s", "assistant", "a1", finish_reason="stop")
    a1b = await repo.add_message("s", "assistant", "a1 again", finish_reason="stop", parent_id=u1.id)
    assert (a1.parent_id, a1b.parent_id) == (u1.id, u1.id)
    assert [m.content for m in await repo.messages("s")] == ["q1", "a1 again"]  # the newest is active
    u1b = await repo.add_message("s", "user", "q1 edited", parent_id=None)
    await repo.add_message("s", "assistant", "a2", finish_reason="stop")
    conversation = await repo.conversation("s")
    assert conversation.siblings(u1.id) == [u1.id, u1b.id]
    assert conversation.siblings(a1.id) == [a1.id, a1b.id]
    assert [m.content for m in conversation.path()] == ["q1 edited", "a2"]
    assert conversation.newest_leaf(u1.id) == a1b.id
    assert await repo.set_active_leaf("s", a1.id) is True
    assert [m.content for m in await repo.messages("s")] == ["q1", "a1"]
    assert await repo.set_active_leaf("no-such-session", a1.id) is False


async def test_an_unanswered_question_on_a_branch_is_answered_there(repo):
    await repo.create("s", "h" * 64, "m")
    u1 = await repo.add_message("s", "user", "q1")
    await repo.add_message("s", "assistant", "a1", finish_reason="stop")
    await repo.add_message("s", "user", "q1 edited", parent_id=u1.parent_id)  # the process died here
    assert await repo.close_unanswered("interrupted") == ["s"]
    conversation = await repo.conversation("s")
    assert [(m.content, m.finish_reason) for m in conversation.path()] == [("q1 edited", None), ("", "interrupted")]
    assert [m.content for m in conversation.path(conversation.newest_leaf(u1.id))] == ["q1", "a1"]  # kept


def _legacy_rows(url: str) -> None:
    """Transcripts as the 0001 schema holds them."""
    now = "2026-01-01 00:00:00"
    for sid, contents in (("a", ["q1", "a1", "q2", "a2"]), ("b", ["only"]), ("c", [])):
        sql(url, "insert into sessions (id, token_hash, title, model, num_tokens, created_at, updated_at) "
                 f"values (:sid, :hash, :sid, 'm', 0, '{now}', '{now}')", sid=sid, hash="h" * 64)
        for seq, content in enumerate(contents):
            sql(url, f"insert into messages (session_id, seq, role, content, created_at) "
                     f"values (:sid, :seq, :role, :content, '{now}')",
                sid=sid, seq=seq, role="user" if seq % 2 == 0 else "assistant", content=content)


async def test_the_migration_turns_stored_transcripts_into_single_branches_and_loses_nothing(database_url):
    url = database_url
    await asyncio.to_thread(upgrade, url, "0001")
    _legacy_rows(url)
    await asyncio.to_thread(upgrade, url)
    db_engine = create_db_engine(url)
    try:
        repo = TranscriptStore(db_sessionmaker(db_engine))
        a = await repo.conversation("a")
        assert [m.content for m in a.path()] == ["q1", "a1", "q2", "a2"]
        assert [m.parent_id for m in a.path()] == [None] + [m.id for m in a.path()[:-1]]
        assert all(a.siblings(m.id) == [m.id] for m in a.messages)
        assert [m.content for m in await repo.messages("b")] == ["only"]
        assert (await repo.conversation("c")).active_leaf_id is None
        await repo.add_message("a", "user", "q3")  # the migrated session goes on from its last message
        assert [m.content for m in await repo.messages("a")][-2:] == ["a2", "q3"]
    finally:
        await db_engine.dispose()


async def test_a_downgrade_keeps_each_active_path(database_url):
    url = database_url
    await asyncio.to_thread(upgrade, url)
    db_engine = create_db_engine(url)
    try:
        repo = TranscriptStore(db_sessionmaker(db_engine))
        await repo.create("s", "h" * 64, "m")
        u1 = await repo.add_message("s", "user", "q1")
        await repo.add_message("s", "assistant", "a1", finish_reason="stop")
        await repo.add_message("s", "assistant", "a1 again", finish_reason="stop", parent_id=u1.id)
    finally:
        await db_engine.dispose()
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0001")
    assert sql(url, "select seq, content from messages where session_id = 's' order by seq") == [
        (0, "q1"), (2, "a1 again")]
