"""Drafts of running turns' answers: one per session, replaced by each checkpoint, gone with the stored answer
or the session; a process killed mid-turn leaves its draft as the interrupted answer; migration 0003 adds
and removes the table without touching the transcripts."""

import asyncio

import pytest

from alembic import command
from storage import TranscriptStore, create_db_engine, db_sessionmaker, upgrade
from storage.migrations import alembic_config
from tests.helpers.database import sql, table_names


@pytest.fixture
async def repo(database_url):
    await asyncio.to_thread(upgrade, database_url)
    db_engine = create_db_engine(database_url)
    yield TranscriptStore(db_sessionmaker(db_engine))
    await db_engine.dispose()


async def test_a_draft_is_replaced_by_the_next_checkpoint(repo):
    await repo.create("s", "h" * 64, "m")
    q = await repo.add_message("s", "user", "q")
    assert await repo.draft("s") is None
    await repo.save_draft("s", q.id, "Once")
    await repo.save_draft("s", q.id, "Once upon")
    assert await repo.draft("s") == (q.id, "Once upon")


async def test_checkpoints_written_at_once_leave_one_draft(repo, database_url):
    """Two writers without turns (two connections): each checkpoint replaces the draft, none fails."""
    await repo.create("s", "h" * 64, "m")
    q = await repo.add_message("s", "user", "q")
    other_engine = create_db_engine(database_url)
    other = TranscriptStore(db_sessionmaker(other_engine))
    try:
        await asyncio.gather(*(store.save_draft("s", q.id, f"draft {i}") for i in range(8) for store in (repo, other)))
    finally:
        await other_engine.dispose()
    assert sql(database_url, "select count(*) from turn_drafts") == [(1,)]
    assert (await repo.draft("s"))[1].startswith("draft ")


async def test_the_stored_answer_takes_its_draft_away_and_a_question_does_not(repo):
    await repo.create("s", "h" * 64, "m")
    q = await repo.add_message("s", "user", "q")
    await repo.save_draft("s", q.id, "partial")
    await repo.add_message("s", "user", "an edit", parent_id=None)  # not an answer: the draft stays
    assert await repo.draft("s") == (q.id, "partial")
    await repo.add_message("s", "assistant", "partial and the rest", finish_reason="stop", parent_id=q.id)
    assert await repo.draft("s") is None


async def test_deleting_a_session_deletes_its_draft(repo, database_url):
    for sid in ("gone", "kept"):
        await repo.create(sid, "h" * 64, "m")
        await repo.save_draft(sid, (await repo.add_message(sid, "user", "q")).id, "draft of " + sid)
    assert await repo.delete("gone") is True
    assert sql(database_url, "select session_id, content from turn_drafts") == [("kept", "draft of kept")]


async def test_a_turn_killed_mid_answer_keeps_its_draft_as_the_interrupted_answer(repo):
    for sid in ("drafted", "undrafted", "regenerated", "answered"):
        await repo.create(sid, "h" * 64, "m")
    q = await repo.add_message("drafted", "user", "q")
    await repo.save_draft("drafted", q.id, "Once upon a")
    await repo.add_message("undrafted", "user", "q")
    # a regenerate killed mid-answer: the earlier answer stays the active leaf, the new one is not kept
    q = await repo.add_message("regenerated", "user", "q")
    await repo.add_message("regenerated", "assistant", "first answer", finish_reason="stop")
    await repo.save_draft("regenerated", q.id, "second ans")
    q = await repo.add_message("answered", "user", "q")
    await repo.add_message("answered", "assistant", "done", finish_reason="stop")

    assert sorted(await repo.close_unanswered("interrupted")) == ["drafted", "undrafted"]
    assert [(m.role, m.content, m.finish_reason) for m in await repo.messages("drafted")] == [
        ("user", "q", None), ("assistant", "Once upon a", "interrupted")]
    assert [(m.content, m.finish_reason) for m in await repo.messages("undrafted")][-1] == ("", "interrupted")
    regenerated = await repo.conversation("regenerated")
    assert [m.content for m in regenerated.path()] == ["q", "first answer"]
    assert len(regenerated.messages) == 2
    for sid in ("drafted", "undrafted", "regenerated", "answered"):
        assert await repo.draft(sid) is None  # every draft is gone
    assert await repo.close_unanswered("interrupted") == []


async def test_migration_0003_adds_and_removes_drafts_and_keeps_the_transcripts(database_url):
    url = database_url
    await asyncio.to_thread(upgrade, url, "0002")
    # a transcript as the 0002 schema holds it (ids from the database: PostgreSQL's sequence stays in step)
    sql(url, "insert into sessions (id, token_hash, model, num_tokens, created_at, updated_at) "
             "values ('s', :hash, 'm', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')", hash="h" * 64)
    parent = None
    for seq, (role, content, reason) in enumerate([("user", "q1", None), ("assistant", "a1", "stop"),
                                                   ("user", "q2", None)]):
        [(parent,)] = sql(url, "insert into messages (session_id, seq, parent_id, role, content, finish_reason, "
                               "created_at) values ('s', :seq, :parent, :role, :content, :reason, "
                               "'2026-01-01 00:00:00') returning id",
                          seq=seq, parent=parent, role=role, content=content, reason=reason)
    q2_id = parent
    sql(url, "update sessions set active_leaf_id = :leaf where id = 's'", leaf=q2_id)

    def rows() -> list[tuple]:
        return sql(url, "select id, parent_id, role, content, finish_reason from messages order by seq")

    before = rows()
    await asyncio.to_thread(upgrade, url, "0003")
    assert rows() == before
    db_engine = create_db_engine(url)
    try:
        repo = TranscriptStore(db_sessionmaker(db_engine))
        await repo.save_draft("s", q2_id, "a2 so far")
        assert await repo.draft("s") == (q2_id, "a2 so far")
    finally:
        await db_engine.dispose()

    await asyncio.to_thread(command.downgrade, alembic_config(url), "0002")
    assert "turn_drafts" not in table_names(url)
    assert sql(url, "select version_num from alembic_version") == [("0002",)]
    assert rows() == before
    await asyncio.to_thread(upgrade, url)  # and up again
    db_engine = create_db_engine(url)
    try:
        repo = TranscriptStore(db_sessionmaker(db_engine))
        assert await repo.draft("s") is None
        assert await repo.close_unanswered("interrupted") == ["s"]
        assert [m.content for m in await repo.messages("s")] == ["q1", "a1", "q2", ""]
    finally:
        await db_engine.dispose()
