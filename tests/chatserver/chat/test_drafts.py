"""Checkpoints of a running answer (chat/drafts.py): at most one per interval, never in the token stream's
way, never two writes at once, nothing after close, a failed write only logged (without a server); and a
served turn's checkpoints, gone once its answer is stored (in-process app on the tiny model)."""

import asyncio
import logging
import threading

from chatserver import keys
from chatserver.app import create_app
from chatserver.chat.drafts import DraftCheckpoints
from chatserver.config import ChatConfig, ServerConfig
from engine import EngineConfig
from storage import StorageUnavailable
from tests.helpers.chat import Chat
from tests.helpers.turn_frames import read_turn, text_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SlowStore:
    """save_draft waits until `release` is set; records what it was given and how many ran at once."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.saved: list[tuple[str, int, str]] = []
        self.release = asyncio.Event()
        self.in_flight = self.most_in_flight = 0
        self.fail = fail

    async def save_draft(self, session_id: str, parent_id: int, content: str, lease=None) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if self.fail is not None:
                raise self.fail
            self.saved.append((session_id, parent_id, content))
        finally:
            self.in_flight -= 1


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_checkpoint_per_interval_with_the_whole_answer_so_far():
    store, clock = SlowStore(), Clock()
    store.release.set()
    drafts = DraftCheckpoints(store, "s", 7, 1.0, clock)
    pieces = ["Once"]
    drafts.offer(pieces)  # the turn has just started: nothing due
    clock.now += 0.5
    pieces.append(" upon")
    drafts.offer(pieces)
    await _settle()
    assert store.saved == []
    clock.now += 0.6
    pieces.append(" a")
    drafts.offer(pieces)
    pieces.append(" time")
    drafts.offer(pieces)  # within the interval of the write just started
    await _settle()
    assert store.saved == [("s", 7, "Once upon a")]
    clock.now += 1.0
    drafts.offer(pieces)
    await drafts.close()
    assert store.saved == [("s", 7, "Once upon a"), ("s", 7, "Once upon a time")]


async def test_a_slow_write_never_holds_the_stream_nor_runs_beside_another_and_close_waits_for_it():
    store, clock = SlowStore(), Clock()
    drafts = DraftCheckpoints(store, "s", 7, 1.0, clock)
    pieces: list[str] = []
    for i in range(20):  # 5 s of tokens while the database hangs
        clock.now += 0.25
        pieces.append(str(i))
        drafts.offer(pieces)  # returns at once
        await asyncio.sleep(0)
    assert store.most_in_flight == 1 and store.saved == []
    closing = asyncio.create_task(drafts.close())
    await _settle()
    assert not closing.done()  # the write in flight has not ended
    store.release.set()
    await closing
    clock.now += 10
    drafts.offer(pieces + ["late"])  # closed: no more checkpoints
    await _settle()
    assert [content for _, _, content in store.saved] == ["0123"] and store.most_in_flight == 1


async def test_a_failed_write_is_logged_and_changes_nothing_else(caplog):
    for failure in (StorageUnavailable("the database refused: locked"), RuntimeError("a bug")):
        store, clock = SlowStore(fail=failure), Clock()
        store.release.set()
        drafts = DraftCheckpoints(store, "s", 7, 1.0, clock)
        clock.now += 1.0
        with caplog.at_level(logging.WARNING, logger="chatserver.chat.drafts"):
            drafts.offer(["text"])
            await drafts.close()  # raises nothing
        assert "could not checkpoint the answer of session s" in caplog.text
        caplog.clear()


async def test_no_checkpoint_when_disabled_or_with_no_question_to_answer():
    for interval, parent in ((0.0, 7), (1.0, None)):
        store, clock = SlowStore(), Clock()
        store.release.set()
        drafts = DraftCheckpoints(store, "s", parent, interval, clock)
        clock.now += 5
        drafts.offer(["text"])
        await drafts.close()
        assert store.saved == []


async def test_a_served_turn_checkpoints_its_answer_and_storing_the_answer_removes_the_draft(
        aiohttp_client, tiny_model, tmp_path, monkeypatch, storage_config):
    config = ServerConfig(data_dir=tmp_path, chat=ChatConfig(draft_seconds=0.05), storage=storage_config,
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    client = await aiohttp_client(create_app(config, model=tiny_model))
    repo = client.app[keys.transcripts]
    saved, save_draft = [], repo.save_draft

    async def recording(session_id: str, parent_id: int, content: str, lease=None) -> None:
        saved.append(content)
        await save_draft(session_id, parent_id, content, lease)

    monkeypatch.setattr(repo, "save_draft", recording)
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello()
    await chat.send(type="user", content="Tell me everything about the sea", max_tokens=64, temperature=0)
    frames = [await chat.recv()]
    hold = threading.Event()  # the engine thread waits between two steps: the next token comes more than
    client.app[keys.engine].engine.query(lambda engine: hold.wait(30))  # one interval after the turn started
    await asyncio.sleep(0.2)
    hold.set()
    frames += await read_turn(chat.recv)
    text = text_of(frames)
    assert saved and saved[0] and all(text.startswith(content) for content in saved), (saved, text)
    assert await repo.draft(session["session_id"]) is None
    assert (await repo.messages(session["session_id"]))[-1].content == text
