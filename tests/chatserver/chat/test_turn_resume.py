"""A turn belongs to its session: it outlives the socket that started it, every connection of the session
reads it, and a client that comes back gets exactly the frames it missed (docs/PROTOCOL.md, "Resuming a
turn"). In-process app on the tiny random model; where a test needs the turn still running, the engine is
held between two steps (a query that blocks its thread)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chatserver import keys
from chatserver.app import create_app
from chatserver.config import ServerConfig
from engine import EngineConfig
from tests.helpers.chat import Chat, bare
from tests.helpers.database import sql
from tests.helpers.polling import wait_until
from tests.helpers.turn_frames import assert_one_turn_in_order, read_turn, text_of

QUESTION = "Tell me everything about the sea"
MAX = 64


class EngineHold:
    """Holds the engine thread between two steps until released (at most 30 s): tokens already streamed
    still arrive, no new one is computed."""

    def __init__(self, client):
        self._gate = threading.Event()
        client.app[keys.engine].engine.query(lambda engine: self._gate.wait(30))

    def release(self) -> None:
        self._gate.set()


async def _uninterrupted(connect) -> tuple[str, dict]:
    chat, _ = await connect()
    text, done = await chat.turn(QUESTION, max_tokens=MAX, temperature=0)
    await chat.ws.close()
    return text, done


async def _start(chat: Chat, num_frames: int = 1) -> list[dict]:
    await chat.send(type="user", content=QUESTION, max_tokens=MAX, temperature=0)
    return [await chat.recv() for _ in range(num_frames)]


def _resume(session: dict, held: list[dict] | None = None) -> dict:
    hello = {"session_id": session["session_id"], "resume_token": session["resume_token"]}
    if held:
        hello["last_seq"] = {"turn_id": held[-1]["turn_id"], "seq": held[-1]["seq"]}
    return hello


async def _stored_answer(client, session_id: str):
    async def answer():
        stored = await client.app[keys.transcripts].messages(session_id)
        return stored[-1] if stored and stored[-1].role == "assistant" else None

    return await wait_until(answer, what="the answer stored")


async def _left(client, session: dict) -> None:
    """The server has seen the session's last connection close."""
    live = client.app[keys.sessions].get_live(session["session_id"])
    await wait_until(lambda: not live.connections, what="the connection gone")


async def _nothing_queued(chat: Chat) -> None:
    """The next frame the connection gets answers a cancel sent now: nothing else was queued before it."""
    await chat.send(type="cancel")
    frame = await chat.recv()
    assert frame["type"] == "error" and frame["code"] == "bad_request", frame


@pytest.mark.parametrize("num_held", [1, 5])
async def test_a_dropped_socket_resumed_with_last_seq_reads_the_whole_answer_once(client, connect, num_held):
    want, want_done = await _uninterrupted(connect)
    chat, session = await connect()
    held = await _start(chat, num_held)
    hold = EngineHold(client)
    await chat.ws.close()

    again, resumed = await connect(**_resume(session, held))
    assert resumed["busy"] is True and resumed["turn"] == {"turn_id": held[0]["turn_id"], "running": True}
    assert bare(resumed["messages"][-1]) == {"role": "user", "content": QUESTION}
    hold.release()
    frames = held + await read_turn(again.recv)
    assert_one_turn_in_order(frames)
    assert text_of(frames) == want and frames[-1]["finish_reason"] == want_done["finish_reason"]
    assert (await _stored_answer(client, session["session_id"])).content == want


@pytest.mark.parametrize("last_seq", [None, {"turn_id": "0123456789abcdef", "seq": 3}], ids=["none", "other-turn"])
async def test_a_resume_without_the_running_turns_id_gets_all_its_frames(client, connect, last_seq):
    want, _ = await _uninterrupted(connect)
    chat, session = await connect()
    held = await _start(chat, 3)
    hold = EngineHold(client)
    await chat.ws.close()

    hello = _resume(session) | ({"last_seq": last_seq} if last_seq else {})
    again, resumed = await connect(**hello)
    assert resumed["turn"] == {"turn_id": held[0]["turn_id"], "running": True}
    hold.release()
    frames = await read_turn(again.recv)
    assert_one_turn_in_order(frames)
    assert frames[:3] == held and text_of(frames) == want


async def test_a_second_connection_sees_the_same_stream(connect):
    want, _ = await _uninterrupted(connect)
    a, session = await connect()
    b, _ = await connect(**_resume(session))
    await a.send(type="user", content=QUESTION, max_tokens=MAX, temperature=0)
    started = await b.recv()
    a_frames, b_frames = await asyncio.gather(read_turn(a.recv), read_turn(b.recv))
    assert started == {"type": "turn", "turn_id": a_frames[0]["turn_id"], "content": QUESTION,
                       "user_message_id": a_frames[-1]["user_message_id"]}
    assert_one_turn_in_order(a_frames)
    assert b_frames == a_frames and text_of(a_frames) == want
    await _nothing_queued(a)
    await _nothing_queued(b)


async def test_cancel_from_the_second_connection_stops_the_turn_for_both(client, connect):
    a, session = await connect()
    b, _ = await connect(**_resume(session))
    await a.send(type="user", content=QUESTION, max_tokens=MAX, temperature=0)
    assert (await b.recv())["type"] == "turn"
    assert (await b.recv())["type"] == "token"
    await b.send(type="cancel")
    a_frames, b_frames = await asyncio.gather(read_turn(a.recv), read_turn(b.recv))
    assert b_frames[-1]["finish_reason"] == "cancelled" and a_frames[-1] == b_frames[-1]
    assert b_frames[-1]["usage"]["completion_tokens"] < MAX
    stored = await _stored_answer(client, session["session_id"])
    assert stored.finish_reason == "cancelled" and stored.content == text_of(a_frames)


async def test_a_turn_alone_for_detached_turn_seconds_is_cancelled_and_stored(make_client):
    client = await make_client(chat={"detached_turn_seconds": 0.3})

    async def connect(**hello):
        chat = Chat(await client.ws_connect("/ws"))
        return chat, await chat.hello(**hello)

    want, _ = await _uninterrupted(connect)
    chat, session = await connect()
    held = await _start(chat, 2)
    hold = EngineHold(client)
    await chat.ws.close()
    await _left(client, session)
    await asyncio.sleep(0.6)  # the timer fires while the engine is held: no token comes after the cancel
    hold.release()
    stored = await _stored_answer(client, session["session_id"])
    assert stored.finish_reason == "cancelled" and want.startswith(stored.content) and len(stored.content) < len(want)

    # its frames are kept: the client that comes back reads the rest of what was streamed, then done
    again, resumed = await connect(**_resume(session, held))
    assert resumed["turn"] == {"turn_id": held[0]["turn_id"], "running": False}
    assert resumed["messages"][-1]["role"] == "user"  # its answer follows as frames
    frames = held + await read_turn(again.recv)
    assert_one_turn_in_order(frames)
    assert text_of(frames) == stored.content and frames[-1]["finish_reason"] == "cancelled"


async def test_a_detached_turn_that_is_resumed_in_time_is_not_cancelled(make_client):
    client = await make_client(chat={"detached_turn_seconds": 0.3})
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello()
    held = await _start(chat, 1)
    hold = EngineHold(client)
    await chat.ws.close()
    await _left(client, session)  # the timer runs
    again = Chat(await client.ws_connect("/ws"))
    assert (await again.hello(**_resume(session, held)))["turn"]["running"] is True
    await asyncio.sleep(0.6)
    hold.release()
    frames = held + await read_turn(again.recv)
    assert frames[-1]["finish_reason"] in ("stop", "length")


async def test_a_turn_that_ended_while_away_is_replayed_once_then_read_from_the_transcript(client, connect):
    want, _ = await _uninterrupted(connect)
    chat, session = await connect()
    held = await _start(chat, 1)
    await chat.ws.close()
    stored = await _stored_answer(client, session["session_id"])  # the turn ended with nobody connected
    assert stored.content == want and stored.finish_reason in ("stop", "length")

    again, resumed = await connect(**_resume(session, held))
    assert resumed["busy"] is False and resumed["turn"] == {"turn_id": held[0]["turn_id"], "running": False}
    assert [m["role"] for m in resumed["messages"]] == ["user"]
    frames = held + await read_turn(again.recv)
    assert_one_turn_in_order(frames)
    assert text_of(frames) == want

    # a client that has the whole turn, or names none, gets no frame: the answer is in the transcript
    for hello in (_resume(session, frames), _resume(session)):
        other, resumed = await connect(**hello)
        assert resumed["turn"] is None
        assert bare(resumed["messages"][-1]) == {"role": "assistant", "content": want,
                                                 "finish_reason": stored.finish_reason}
        await _nothing_queued(other)


async def test_the_last_turns_frames_go_when_the_next_turn_starts(connect):
    chat, session = await connect()
    await _start(chat, 0)
    first = await read_turn(chat.recv)
    second, _ = await chat.turn("and then?", max_tokens=8, temperature=0)
    other, resumed = await connect(**_resume(session, first[:1]))  # an older turn: ended, in the transcript
    assert resumed["turn"] is None
    assert [m["content"] for m in resumed["messages"] if m["role"] == "assistant"] == [text_of(first), second]
    await _nothing_queued(other)


BAD_LAST_SEQ = [
    {"turn_id": "t", "seq": -1},
    {"turn_id": "t", "seq": "3"},
    {"turn_id": "t", "seq": 1.0},
    {"seq": 3},
    {"turn_id": "", "seq": 0},
    {"turn_id": "x" * 65, "seq": 0},
    {"turn_id": 7, "seq": 0},
    "t:3",
    [1, 2],
]


@pytest.mark.parametrize("last_seq", BAD_LAST_SEQ + ["beyond-the-end"])
async def test_bad_last_seq_gets_a_typed_error_and_changes_nothing(client, connect, last_seq):
    chat, session = await connect()
    await _start(chat, 0)
    frames = await read_turn(chat.recv)
    stored = await client.app[keys.transcripts].messages(session["session_id"])
    if last_seq == "beyond-the-end":
        last_seq = {"turn_id": frames[0]["turn_id"], "seq": frames[-1]["seq"] + 1}
    elif isinstance(last_seq, dict) and last_seq.get("turn_id") == "t":
        last_seq = {**last_seq, "turn_id": frames[0]["turn_id"]}

    other, refused = await connect(**_resume(session), last_seq=last_seq)
    assert refused["type"] == "error" and refused["code"] == "bad_request" and "last_seq" in refused["message"]
    assert await client.app[keys.transcripts].messages(session["session_id"]) == stored
    # the refused connection is attached to nothing; a valid resume on it still gets the turn's tail
    await other.send(type="user", content="hi")
    assert (await other.recv())["code"] == "bad_request"
    resumed = await other.hello(**_resume(session, frames[:2]))
    assert resumed["turn"] == {"turn_id": frames[0]["turn_id"], "running": False}
    assert await read_turn(other.recv) == frames[2:]


async def test_last_seq_without_a_session_is_refused(connect):
    _, refused = await connect(last_seq={"turn_id": "abc", "seq": 0})
    assert refused["type"] == "error" and refused["code"] == "bad_request"


async def test_shutdown_cancels_a_running_detached_turn_and_stores_it(aiohttp_client, tiny_model, tmp_path,
                                                                       storage_config):
    client = await aiohttp_client(create_app(
        ServerConfig(data_dir=tmp_path, storage=storage_config,
                     engine=EngineConfig(max_context=1024, max_new_tokens=64)), model=tiny_model))
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello()
    await _start(chat, 1)
    hold = EngineHold(client)
    await chat.ws.close()
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0.3)  # the shutdown has asked the engine to cancel the turn
    hold.release()
    await closing
    rows = sql(storage_config.database_url,
               "SELECT role, finish_reason FROM messages WHERE session_id = :sid ORDER BY seq", sid=session["session_id"])
    assert rows == [("user", None), ("assistant", "cancelled")]


async def test_a_user_message_left_unanswered_by_a_dead_server_reads_as_interrupted(aiohttp_client, tiny_model,
                                                                                    tmp_path, storage_config):
    """What a server killed mid-turn leaves (the user message stored, no answer) is answered at the next
    start: an empty assistant message, finish_reason "interrupted"; the conversation goes on."""
    config = ServerConfig(data_dir=tmp_path, storage=storage_config,
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    first = await aiohttp_client(create_app(config, model=tiny_model))
    chat = Chat(await first.ws_connect("/ws"))
    session = await chat.hello()
    text, done = await chat.turn("hello", max_tokens=8, temperature=0)
    await first.app[keys.transcripts].add_message(session["session_id"], "user", "the question in flight")
    await chat.ws.close()
    await first.close()

    second = await aiohttp_client(create_app(config, model=tiny_model))
    chat = Chat(await second.ws_connect("/ws"))
    resumed = await chat.hello(**_resume(session))
    assert [bare(m) for m in resumed["messages"]] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": text, "finish_reason": done["finish_reason"]},
        {"role": "user", "content": "the question in flight"},
        {"role": "assistant", "content": "", "finish_reason": "interrupted"}]
    assert resumed["busy"] is False and resumed["turn"] is None
    _, done = await chat.turn("are you there?", max_tokens=4, temperature=0)
    assert done["type"] == "done"
