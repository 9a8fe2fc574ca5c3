"""Many WebSocket clients at once (tiny model): everyone is served, and back-pressure is typed."""

import asyncio

from chatserver import keys
from tests.helpers.chat import Chat


async def test_many_concurrent_clients_all_complete_and_are_stored(client):
    async def converse(i: int):
        chat = Chat(await client.ws_connect("/ws"))
        session = await chat.hello()
        answers = []
        for turn in range(2):
            text, done = await chat.turn(f"client {i} turn {turn}", max_tokens=8 + i % 5, temperature=0.8, seed=i)
            assert done["type"] == "done", done
            answers.append(text)
        await chat.ws.close()
        return session["session_id"], answers

    results = await asyncio.gather(*[converse(i) for i in range(8)])
    repo = client.app[keys.transcripts]
    for session_id, answers in results:
        stored = await repo.messages(session_id)
        assert [m.content for m in stored if m.role == "assistant"] == answers
    stats = await client.app[keys.engine].stats()
    assert stats["engine"]["decode_batch"]["max"] > 1  # turns really shared forward passes


async def test_overloaded_is_immediate_retryable_and_stores_nothing(make_client):
    from engine.config import EngineConfig

    client = await make_client(engine=EngineConfig(max_context=1024, max_new_tokens=64, max_queue=2))
    chats = [Chat(await client.ws_connect("/ws")) for _ in range(3)]
    sessions = [await c.hello() for c in chats]
    for c in chats[:2]:
        await c.send(type="user", content="write a long story", max_tokens=64, temperature=0)
    for c in chats[:2]:
        assert (await c.recv())["type"] == "token"  # both admitted and streaming
    await chats[2].send(type="user", content="me too", max_tokens=8)
    error = await chats[2].recv()
    assert error["type"] == "error" and error["code"] == "overloaded"
    assert await client.app[keys.transcripts].messages(sessions[2]["session_id"]) == []
    for c in chats[:2]:  # the admitted turns finish normally
        while (frame := await c.recv())["type"] == "token":
            pass
        assert frame["type"] == "done"
    _, done = await chats[2].turn("me too", max_tokens=8)  # retry succeeds
    assert done["type"] == "done"
