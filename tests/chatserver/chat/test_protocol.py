"""The WebSocket protocol through the real aiohttp app (tiny random model for speed)."""

import json

import pytest
from aiohttp import WSMsgType

from chatserver import keys
from storage import StorageUnavailable
from tests.helpers.chat import Chat, bare
from tests.helpers.polling import wait_until


async def test_new_session_streams_tokens_and_reports_usage(client, connect):
    chat, session = await connect()
    assert session["type"] == "session" and session["resumed"] is False and session["messages"] == []
    models = await (await client.get("/v1/models")).json()
    assert session["model"] == models["data"][0]["id"]  # also where /v1/models asks for an API key
    assert len(session["resume_token"]) >= 22  # >= 128 bits, urlsafe base64
    text, done = await chat.turn("Hello there", max_tokens=12, temperature=0)
    assert done["type"] == "done"
    assert done["finish_reason"] in ("stop", "length")
    assert done["usage"]["completion_tokens"] >= 1
    assert done["usage"]["cached_tokens"] == 0 and done["cache"] == "miss"
    assert set(done["timings"]) == {"ttft_ms", "prefill_ms", "decode_ms"}


async def test_second_turn_reuses_the_kv_of_the_first(connect):
    chat, _ = await connect()
    _, first = await chat.turn("Tell me a story", max_tokens=10, temperature=0)
    _, second = await chat.turn("And then?", max_tokens=10, temperature=0)
    p1 = first["usage"]["prompt_tokens"]
    # the whole first prompt is reused (the random model's answer may re-tokenize differently,
    # and the template's "\n" before it can merge with a leading newline of the answer)
    assert second["usage"]["cached_tokens"] >= p1 - 1
    assert second["cache"] == "ram"
    assert second["usage"]["prompt_tokens"] > second["usage"]["cached_tokens"]


async def test_resume_needs_the_token_and_returns_the_transcript(connect):
    chat, session = await connect()
    text, _ = await chat.turn("Remember the word banana", max_tokens=8, temperature=0)
    await chat.ws.close()

    other, resumed = await connect(session_id=session["session_id"], resume_token=session["resume_token"])
    assert resumed["resumed"] is True and resumed["session_id"] == session["session_id"]
    assert [m["role"] for m in resumed["messages"]] == ["user", "assistant"]
    assert resumed["messages"][0]["content"] == "Remember the word banana"
    assert resumed["messages"][1]["content"] == text
    assert resumed["messages"][1]["finish_reason"] in ("stop", "length") and resumed["busy"] is False

    _, refused = await connect(session_id=session["session_id"], resume_token="not-the-token")
    assert refused == {"type": "error", "code": "unauthorized", "message": refused["message"]}
    _, refused = await connect(session_id=session["session_id"])
    assert refused["code"] == "unauthorized"
    _, missing = await connect(session_id="0" * 32, resume_token=session["resume_token"])
    assert missing["code"] == "session_not_found"


async def test_resume_token_is_stored_only_as_a_hash(client, connect):
    chat, session = await connect()
    await chat.turn("hi", max_tokens=2)
    record = await client.app[keys.transcripts].get(session["session_id"])
    assert session["resume_token"] not in record.token_hash
    assert len(record.token_hash) == 64


async def test_transcript_is_persisted_with_usage(client, connect):
    chat, session = await connect()
    await chat.send(type="system", content="You are terse.")
    text, done = await chat.turn("Hi", max_tokens=6, temperature=0)
    stored = await client.app[keys.transcripts].messages(session["session_id"])
    assert [(m.role, m.content) for m in stored] == [("system", "You are terse."), ("user", "Hi"), ("assistant", text)]
    assert stored[2].finish_reason == done["finish_reason"]
    record = await client.app[keys.transcripts].get(session["session_id"])
    assert record.title == "Hi"
    assert record.num_tokens == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]


async def test_cancel_keeps_the_partial_answer(client, connect):
    chat, session = await connect()
    await chat.send(type="user", content="Count to one hundred", max_tokens=64, temperature=0)
    first = await chat.recv()
    assert first["type"] == "token"
    await chat.send(type="cancel")
    text = first["text"]
    while (frame := await chat.recv())["type"] == "token":
        text += frame["text"]
    assert frame["type"] == "done" and frame["finish_reason"] == "cancelled"
    assert frame["usage"]["completion_tokens"] < 64
    stored = await client.app[keys.transcripts].messages(session["session_id"])
    assert stored[-1].role == "assistant" and stored[-1].content == text and stored[-1].finish_reason == "cancelled"
    # the session goes on, and the partial answer's KV is reused
    _, done = await chat.turn("go on", max_tokens=4, temperature=0)
    assert done["type"] == "done" and done["usage"]["cached_tokens"] > 0


BAD_FRAMES = [
    ("not json", "bad_request"),
    ("[1, 2]", "bad_request"),
    (json.dumps({"content": "no type"}), "bad_request"),
    (json.dumps({"type": "dance"}), "bad_request"),
    (json.dumps({"type": "user"}), "bad_request"),
    (json.dumps({"type": "user", "content": 5}), "bad_request"),
    (json.dumps({"type": "user", "content": "   "}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "max_tokens": "10"}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "max_tokens": 0}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "max_tokens": 65}), "bad_request"),  # above max_new_tokens
    (json.dumps({"type": "user", "content": "hi", "temperature": -0.1}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "top_p": 0}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "top_p": 1.5}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "top_k": -1}), "bad_request"),
    (json.dumps({"type": "user", "content": "hi", "seed": -3}), "bad_request"),
    (json.dumps({"type": "hello", "session_id": 12}), "bad_request"),
    (json.dumps({"type": "cancel"}), "bad_request"),  # nothing running
    (json.dumps({"type": "user", "content": "hello " * 1000}), "context_length_exceeded"),
    # nesting too deep for the JSON parser (100 KB and 500 KB, under the 1 MiB frame limit)
    ("[" * 100_000, "bad_request"),
    ('{"a":' * 100_000, "bad_request"),
    (json.dumps({"type": "user", "content": "hi"})[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}", "bad_request"),
    ('{"type": ' + "[" * 900 + "]" * 900 + "}", "bad_request"),  # parses (900 levels): an unknown frame type
]


@pytest.mark.parametrize("raw,code", BAD_FRAMES)
async def test_bad_input_gets_a_typed_error_and_changes_nothing(client, connect, raw, code):
    chat, session = await connect()
    _, before = await chat.turn("first", max_tokens=4, temperature=0)
    stored_before = await client.app[keys.transcripts].messages(session["session_id"])
    await chat.ws.send_str(raw)
    error = await chat.recv()
    assert error["type"] == "error" and error["code"] == code, error
    assert error["message"]
    assert await client.app[keys.transcripts].messages(session["session_id"]) == stored_before
    # the connection still works and the session's KV is intact: the next turn reuses it
    _, after = await chat.turn("second", max_tokens=4, temperature=0)
    assert after["type"] == "done" and after["usage"]["cached_tokens"] >= before["usage"]["prompt_tokens"] - 1


async def test_a_hello_alone_stores_nothing_but_can_be_resumed(client, connect):
    chat, session = await connect()
    assert await client.app[keys.transcripts].get(session["session_id"]) is None
    await chat.ws.close()
    again, resumed = await connect(session_id=session["session_id"], resume_token=session["resume_token"])
    assert resumed["resumed"] is True and resumed["messages"] == []
    _, refused = await connect(session_id=session["session_id"], resume_token="wrong")
    assert refused["code"] == "unauthorized"
    await again.turn("now it exists", max_tokens=2)
    assert await client.app[keys.transcripts].get(session["session_id"]) is not None


async def test_resume_while_a_turn_runs_says_busy_and_names_the_turn(connect):
    chat, session = await connect()
    await chat.send(type="user", content="a long answer please", max_tokens=64, temperature=0)
    first = await chat.recv()
    assert first["type"] == "token" and first["seq"] == 0
    _, resumed = await connect(session_id=session["session_id"], resume_token=session["resume_token"])
    assert resumed["busy"] is True and bare(resumed["messages"][-1]) == {"role": "user", "content": "a long answer please"}
    assert resumed["turn"] == {"turn_id": first["turn_id"], "running": True}


async def test_user_before_hello_is_refused(client):
    chat = Chat(await client.ws_connect("/ws"))
    await chat.send(type="user", content="hi")
    assert (await chat.recv())["code"] == "bad_request"


async def test_second_turn_while_one_runs_is_busy(connect):
    chat, _ = await connect()
    await chat.send(type="user", content="Write a long poem", max_tokens=64, temperature=0)
    await chat.send(type="user", content="and another")
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await chat.recv())
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["busy"]


async def test_busy_across_two_connections_of_one_session(connect):
    a, session = await connect()
    b, _ = await connect(session_id=session["session_id"], resume_token=session["resume_token"])
    await a.send(type="user", content="Write a long poem", max_tokens=64, temperature=0)
    assert (await a.recv())["type"] == "token"
    assert (await b.recv())["type"] == "turn"  # b follows the turn a started
    await b.send(type="user", content="interrupt")
    while (frame := await b.recv())["type"] == "token":
        pass
    assert frame["code"] == "busy"


async def test_system_prompt_after_first_turn_is_refused(connect):
    chat, _ = await connect()
    await chat.turn("hi", max_tokens=2)
    await chat.send(type="system", content="too late")
    assert (await chat.recv())["code"] == "bad_request"


async def test_oversized_frame_closes_with_1009(make_client):
    client = await make_client(http={'max_frame_bytes': 4096})
    ws = await client.ws_connect("/ws")
    await ws.send_str(json.dumps({"type": "hello", "pad": "x" * 10_000}))
    msg = await ws.receive(timeout=10)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert ws.close_code == 1009


async def test_cross_origin_websocket_is_refused(client):
    resp = await client.get("/ws", headers={"Origin": "http://evil.example", "Connection": "Upgrade",
                                            "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 403
    ok = await client.ws_connect("/ws", headers={"Origin": f"http://{client.host}:{client.port}"})
    await ok.close()


async def test_client_vanishing_mid_turn_does_not_stop_the_answer(client, connect):
    alone, _ = await connect()
    want, want_done = await alone.turn("Tell me everything", max_tokens=64, temperature=0)
    chat, session = await connect()
    await chat.send(type="user", content="Tell me everything", max_tokens=64, temperature=0)
    assert (await chat.recv())["type"] == "token"
    await chat.ws.close()
    repo = client.app[keys.transcripts]

    async def answer_stored():
        stored = await repo.messages(session["session_id"])
        return stored[-1] if stored[-1].role == "assistant" else None

    stored = await wait_until(answer_stored, what="the answer stored")
    assert stored.finish_reason == want_done["finish_reason"] and stored.content == want
    assert client.app[keys.engine].engine.num_admitted == 0


async def test_index_page_and_health(client):
    page = await client.get("/")
    assert page.status == 200 and "chatserver" in await page.text()
    assert (await client.get("/healthz")).status == 200


async def test_a_message_that_cannot_be_stored_is_refused_and_leaves_no_trace(client, connect):
    """The prefill starts before the message is stored; if storing fails the turn is cancelled, the
    client gets a typed error, and the next turn answers as if the failed one never happened."""
    chat, session = await connect()
    repo = client.app[keys.transcripts]
    real_add = repo.add_message

    async def failing_add(*args, **kwargs):
        raise StorageUnavailable("the database refused: OperationalError: database or disk is full")

    repo.add_message = failing_add
    text, error = await chat.turn("A long question that will not be stored " * 8, max_tokens=12, temperature=0)
    assert error == {"type": "error", "code": "storage_unavailable", "message": error["message"]} and text == ""
    repo.add_message = real_add
    assert await repo.get(session["session_id"]) is None or await repo.messages(session["session_id"]) == []

    _, done = await chat.turn("What is two plus two?", max_tokens=12, temperature=0)
    fresh, _ = await connect()
    want, _ = await fresh.turn("What is two plus two?", max_tokens=12, temperature=0)
    stored = await repo.messages(session["session_id"])
    assert [m.role for m in stored] == ["user", "assistant"] and stored[0].content == "What is two plus two?"
    assert stored[1].content == want, "the refused message must not influence the next answer"
