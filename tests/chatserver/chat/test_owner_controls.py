"""The owner's controls over a WebSocket, with the resume token the connection was opened with: rename,
delete_session (transcript, KV in RAM and on disk; every connection of the session told and closed, a
running turn cancelled first) and export (docs/PROTOCOL.md). In-process app on the tiny random model."""

from __future__ import annotations

import threading

import pytest
from aiohttp import WSMsgType

from chatserver import keys
from chatserver.chat.websocket import SESSION_GONE

QUESTION = "Tell me everything about the sea"


def _resume(session: dict) -> dict:
    return {"session_id": session["session_id"], "resume_token": session["resume_token"]}


async def _closed_with(chat) -> tuple[dict, int]:
    """(the last frame before the close, the close code)."""
    frame = await chat.recv()
    msg = await chat.ws.receive(timeout=30)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
    return frame, chat.ws.close_code


async def test_rename_stores_the_title_and_resumes_show_it(client, connect):
    chat, session = await connect()
    await chat.turn("hello there", max_tokens=4)
    await chat.send(type="rename", title="  Harbour\n accounts  ")
    assert await chat.recv() == {"type": "renamed", "title": "Harbour accounts"}
    assert (await client.app[keys.transcripts].get(session["session_id"])).title == "Harbour accounts"
    await chat.send(type="export")
    assert (await chat.recv())["session"]["title"] == "Harbour accounts"


async def test_rename_before_the_first_turn_stores_the_session(client, connect):
    chat, session = await connect()
    await chat.send(type="rename", title="Planned chat")
    assert (await chat.recv())["type"] == "renamed"
    record = await client.app[keys.transcripts].get(session["session_id"])
    assert record is not None and record.title == "Planned chat"
    again, resumed = await connect(**_resume(session))
    assert resumed["resumed"] is True and resumed["messages"] == []


@pytest.mark.parametrize("frame, message", [
    ({"type": "rename", "title": "   "}, "title: must not be empty"),
    ({"type": "rename", "title": ""}, "title"),
    ({"type": "rename", "title": "x" * 201}, "title"),
    ({"type": "rename", "title": 7}, "title"),
    ({"type": "rename"}, "title"),
])
async def test_a_bad_rename_is_a_typed_error_and_changes_nothing(client, connect, frame, message):
    chat, session = await connect()
    await chat.turn("hello there", max_tokens=4)
    before = (await client.app[keys.transcripts].get(session["session_id"])).title
    await chat.send(**frame)
    error = await chat.recv()
    assert error["type"] == "error" and error["code"] == "bad_request" and message in error["message"], error
    assert (await client.app[keys.transcripts].get(session["session_id"])).title == before == "hello there"


@pytest.mark.parametrize("kind", ["rename", "delete_session", "export"])
async def test_the_owner_controls_need_a_session_first(client, kind):
    from tests.helpers.chat import Chat

    chat = Chat(await client.ws_connect("/ws"))
    await chat.send(type=kind, title="t")
    error = await chat.recv()
    assert error["code"] == "bad_request" and "hello" in error["message"]


async def test_export_returns_the_conversation(client, connect):
    chat, session = await connect()
    first, _ = await chat.turn("hello there", max_tokens=4)
    second, done = await chat.turn("and again", max_tokens=3)
    await chat.send(type="export")
    exported = (await chat.recv())["session"]
    assert exported["session_id"] == session["session_id"] and exported["title"] == "hello there"
    assert exported["model"] and exported["created_at"].endswith("+00:00")
    assert [(m["role"], m["content"]) for m in exported["messages"]] == [
        ("user", "hello there"), ("assistant", first), ("user", "and again"), ("assistant", second)]
    assert exported["messages"][-1]["finish_reason"] == done["finish_reason"]


async def test_delete_session_removes_everything_and_closes_every_connection(client, connect):
    owner, session = await connect()
    await owner.turn("hello there", max_tokens=4)
    sid = session["session_id"]
    await client.app[keys.engine].spill(sid)  # its KV on disk
    assert (await client.app[keys.engine].kv_placement([sid]))[sid][0] == "disk"
    other, _ = await connect(**_resume(session))  # a second tab
    assert (await client.app[keys.engine].kv_placement([sid]))[sid][0] in ("ram", "disk")

    await owner.send(type="delete_session")
    for chat in (owner, other):
        frame, code = await _closed_with(chat)
        assert frame["type"] == "error" and frame["code"] == "session_deleted", frame
        assert "its owner" in frame["message"] and code == SESSION_GONE
    assert await client.app[keys.transcripts].get(sid) is None
    assert (await client.app[keys.engine].kv_placement([sid]))[sid][0] == "none"
    assert not list((client.app[keys.config].data_dir).rglob(f"*{sid}*"))  # no spill file left
    later, refused = await connect(**_resume(session))
    assert refused["type"] == "error" and refused["code"] == "session_not_found"


async def test_delete_session_during_a_running_turn_cancels_it_first(client, connect):
    owner, session = await connect()
    sid = session["session_id"]
    await owner.turn("hello there", max_tokens=4)
    other, _ = await connect(**_resume(session))
    gate = threading.Event()
    await owner.send(type="user", content="Tell me everything about the sea", max_tokens=60, temperature=0)
    assert (await owner.recv())["type"] == "token"
    client.app[keys.engine].engine.query(lambda engine: gate.wait(30))  # hold the engine: the turn runs on
    await other.send(type="delete_session")
    gate.set()
    frames = []
    while (frame := await owner.recv())["type"] != "error" or frame["code"] != "session_deleted":
        frames.append(frame)
    assert all(f["type"] in ("token", "done", "turn") for f in frames), frames
    assert not frames or frames[-1]["type"] != "done" or frames[-1]["finish_reason"] == "cancelled"
    assert await client.app[keys.transcripts].get(sid) is None
    assert (await client.app[keys.engine].kv_placement([sid]))[sid][0] == "none"
