"""Drafts of running turns' answers: one per session, replaced by each checkpoint, gone with the stored answer
or the session; a process killed mid-turn leaves its draft as the interrupted answer; migration 0003 adds
and removes the table without touching the transcripts."""

import asyncio
import sqlite3

import pytest

from alembic import command
from storage import TranscriptStore, create_db_engine, db_sessionmaker, sqlite_url, upgrade
from storage.migrations import alembic_config


@pytest.fixture
async def repo(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    await asyncio.to_thread(upgrade, url)
    db_engine = create_db_engine(url)
    yield TranscriptStore(db_sessionmaker(db_engine))
    await db_engine.dispose()


async def test_a_draft_is_replaced_by_the_next_checkpoint(repo):
    await repo.create("s", "h" * 64, "m")
    q = await repo.add_message("s", "user", "q")
    assert await repo.draft("s") is None
    await repo.save_draft("s", q.id, "Once")
    await repo.save_draft("s", q.id, "Once upon")
    assert await repo.draft("s") == (q.id, "Once upon")


async def test_the_stored_answer_takes_its_draft_away_and_a_question_does_not(repo):
    await repo.create("s", "h" * 64, "m")
    q = await repo.add_message("s", "user", "q")
    await repo.save_draft("s", q.id, "partial")
    await repo.add_message("s", "user", "an edit", parent_id=None)  # not an answer: the draft stays
    assert await repo.draft("s") == (q.id, "partial")
    await repo.add_message("s", "assistant", "partial and the rest", finish_reason="stop", parent_id=q.id)
    assert await repo.draft("s") is None


async def test_deleting_a_session_deletes_its_draft(repo, tmp_path):
    for sid in ("gone", "kept"):
        await repo.create(sid, "h" * 64, "m")
        await repo.save_draft(sid, (await repo.add_message(sid, "user", "q")).id, "draft of " + sid)
    assert await repo.delete("gone") is True
    with sqlite3.connect(tmp_path / "chat.db") as db:
        assert db.execute("select session_id, content from turn_drafts").fetchall() == [("kept", "draft of kept")]


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


async def test_migration_0003_adds_and_removes_drafts_and_keeps_the_transcripts(tmp_path):
    url = sqlite_url(tmp_path / "chat.db")
    await asyncio.to_thread(upgrade, url, "0002")
    with sqlite3.connect(tmp_path / "chat.db") as db:  # a transcript as the 0002 schema holds it
        db.execute("insert into sessions (id, token_hash, model, num_tokens, created_at, updated_at, active_leaf_id) "
                   "values ('s', ?, 'm', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 3)", ("h" * 64,))
        for i, (role, content, reason) in enumerate([("user", "q1", None), ("assistant", "a1", "stop"),
                                                     ("user", "q2", None)], start=1):
            db.execute("insert into messages (id, session_id, seq, parent_id, role, content, finish_reason, created_at) "
                       "values (?, 's', ?, ?, ?, ?, ?, '2026-01-01 00:00:00')", (i, i - 1, i - 1 or None, role, content, reason))
    q2_id = 3

    def rows() -> list[tuple]:
        with sqlite3.connect(tmp_path / "chat.db") as db:
            return db.execute("select id, parent_id, role, content, finish_reason from messages order by seq").fetchall()

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
    with sqlite3.connect(tmp_path / "chat.db") as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        assert "turn_drafts" not in tables
        assert db.execute("select version_num from alembic_version").fetchone() == ("0002",)
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
