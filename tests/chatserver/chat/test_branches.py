"""Conversation trees over a WebSocket (docs/PROTOCOL.md, "Branches"): regenerate, edit and switch, what the
session, path and done frames say about them, the KV each reuses, and every bad input answered with a typed
error that changes nothing. In-process app on the tiny random model."""

from __future__ import annotations

import threading

from chatserver import keys
from tests.helpers.chat import Chat, bare
from tests.helpers.turn_frames import read_turn, text_of

GREEDY = {"max_tokens": 8, "temperature": 0}


def _resume(session: dict) -> dict:
    return {"session_id": session["session_id"], "resume_token": session["resume_token"]}


async def _branch_turn(chat: Chat, **frame) -> tuple[dict, str, dict]:
    """Send regenerate or edit; return (the path frame, the answer's text, its done frame)."""
    await chat.send(**frame)
    path = await chat.recv()
    assert path["type"] == "path", path
    frames = await read_turn(chat.recv)
    assert {f["turn_id"] for f in frames} == {path["turn_id"]}
    return path, text_of(frames), frames[-1]


async def _tree(chat: Chat) -> dict:
    await chat.send(type="export", tree=True)
    return (await chat.recv())["session"]


async def test_regenerate_adds_a_sibling_answer_from_the_cached_prompt_and_switch_shows_either(connect):
    chat, session = await connect()
    text, first = await chat.turn("Tell me about the sea", **GREEDY)
    path, again, done = await _branch_turn(chat, type="regenerate", max_tokens=8, temperature=1.0, seed=5)
    question = path["messages"][-1]
    assert question["role"] == "user" and question["id"] == first["user_message_id"] == done["user_message_id"]
    assert done["siblings"] == [first["message_id"], done["message_id"]]
    assert done["usage"]["cached_tokens"] == done["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]

    other, resumed = await connect(**_resume(session))
    shown = resumed["messages"][-1]
    assert (shown["id"], shown["content"], shown["siblings"]) == (done["message_id"], again, done["siblings"])

    await chat.send(type="switch", message_id=first["message_id"])
    for c in (chat, other):  # every connection of the session is shown the path
        switched = await c.recv()
        assert switched["type"] == "path" and switched["turn_id"] is None
        assert [bare(m) for m in switched["messages"]] == [
            {"role": "user", "content": "Tell me about the sea"},
            {"role": "assistant", "content": text, "finish_reason": first["finish_reason"]}]
    _, resumed = await connect(**_resume(session))
    assert resumed["messages"][-1]["id"] == first["message_id"]


async def test_regenerate_by_message_id_answers_that_answer_s_question(connect):
    chat, _ = await connect()
    _, first = await chat.turn("first question", **GREEDY)
    _, second = await chat.turn("second question", **GREEDY)
    path, _, done = await _branch_turn(chat, type="regenerate", message_id=first["message_id"], **GREEDY)
    assert [m["content"] for m in path["messages"]] == ["first question"]
    assert done["siblings"] == [first["message_id"], done["message_id"]]
    # the first answer's branch, with the second turn on it, is still there to switch to
    await chat.send(type="switch", message_id=first["message_id"])
    switched = await chat.recv()
    assert switched["messages"][-1]["id"] == second["message_id"]  # down to that branch's newest leaf


async def test_edit_adds_a_sibling_question_and_prefills_only_from_it(connect):
    chat, _ = await connect()
    _, first = await chat.turn("Remember the word banana", **GREEDY)
    _, second = await chat.turn("What word did I ask you to remember?", **GREEDY)
    path, _, done = await _branch_turn(chat, type="edit", message_id=second["user_message_id"],
                                       content="Which fruit did I name?", **GREEDY)
    edited = path["messages"][-1]
    assert (edited["role"], edited["content"]) == ("user", "Which fruit did I name?")
    assert edited["siblings"] == [second["user_message_id"], edited["id"]] and edited["id"] == done["user_message_id"]
    assert [m["id"] for m in path["messages"][:-1]] == [first["user_message_id"], first["message_id"]]
    # everything before the edited question is reused: only the new question (and its template) is computed
    assert done["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"] - 1
    assert done["usage"]["prompt_tokens"] - done["usage"]["cached_tokens"] < 20


async def test_edit_of_the_first_question_starts_a_sibling_conversation(connect):
    chat, _ = await connect()
    _, first = await chat.turn("hello", **GREEDY)
    path, _, done = await _branch_turn(chat, type="edit", message_id=first["user_message_id"], content="hi", **GREEDY)
    assert [m["content"] for m in path["messages"]] == ["hi"]
    assert path["messages"][0]["siblings"] == [first["user_message_id"], done["user_message_id"]]
    tree = await _tree(chat)
    assert [m["content"] for m in tree["messages"]][:2] == ["hello", tree["messages"][1]["content"]]
    assert len(tree["messages"]) == 4 and tree["active_leaf_id"] == done["message_id"]


async def test_export_of_the_tree_holds_every_branch_and_the_active_leaf(connect):
    chat, _ = await connect()
    _, first = await chat.turn("q", **GREEDY)
    _, _, done = await _branch_turn(chat, type="regenerate", **GREEDY)
    tree = await _tree(chat)
    assert [(m["id"], m["parent_id"], m["role"]) for m in tree["messages"]] == [
        (first["user_message_id"], None, "user"), (first["message_id"], first["user_message_id"], "assistant"),
        (done["message_id"], first["user_message_id"], "assistant")]
    assert tree["active_leaf_id"] == done["message_id"] and all("created_at" in m for m in tree["messages"])
    await chat.send(type="export")
    active = (await chat.recv())["session"]["messages"]
    assert [m["id"] for m in active] == [first["user_message_id"], done["message_id"]]


async def test_bad_tree_requests_get_typed_errors_and_change_nothing(connect):
    chat, session = await connect()
    await chat.send(type="regenerate")
    assert (await chat.recv())["code"] == "bad_request"  # nothing to regenerate yet
    _, first = await chat.turn("question", **GREEDY)
    stranger, _ = await connect()
    _, foreign = await stranger.turn("someone else's question", **GREEDY)
    before = await _tree(chat)
    cases = [
        ({"type": "switch", "message_id": 10**9}, "message_not_found"),
        ({"type": "switch", "message_id": foreign["message_id"]}, "message_not_found"),  # another session's
        ({"type": "regenerate", "message_id": foreign["message_id"]}, "message_not_found"),
        ({"type": "edit", "message_id": foreign["user_message_id"], "content": "x"},
         "message_not_found"),
        ({"type": "edit", "message_id": first["message_id"], "content": "x"}, "bad_request"),  # an answer
        ({"type": "regenerate", "message_id": first["user_message_id"]}, "bad_request"),  # a question
        ({"type": "edit", "message_id": first["user_message_id"], "content": "  "}, "bad_request"),
        ({"type": "edit", "message_id": str(first["user_message_id"]), "content": "x"}, "bad_request"),
        ({"type": "switch", "message_id": 0}, "bad_request"),
        ({"type": "edit", "message_id": first["user_message_id"]}, "bad_request"),  # no content
    ]
    for frame, code in cases:
        await chat.send(**frame)
        error = await chat.recv()
        assert error["type"] == "error" and error["code"] == code, (frame, error)
    assert await _tree(chat) == before
    _, resumed = await connect(**_resume(session))
    assert resumed["busy"] is False and resumed["messages"][-1]["id"] == first["message_id"]


async def test_tree_requests_while_a_turn_runs_are_busy_and_delete_cancels_it_first(client, connect):
    hold = threading.Event()
    engine = client.app[keys.engine].engine
    chat, session = await connect()
    _, first = await chat.turn("question", **GREEDY)
    engine.query(lambda e: hold.wait(30))  # the engine thread waits: the next turn stays running
    await chat.send(type="regenerate", **GREEDY)
    assert (await chat.recv())["type"] == "path"
    for frame in ({"type": "switch", "message_id": first["message_id"]}, {"type": "regenerate"},
                  {"type": "edit", "message_id": first["user_message_id"], "content": "x"},
                  {"type": "user", "content": "x"}):
        await chat.send(**frame)
        assert (await chat.recv())["code"] == "busy", frame
    hold.set()
    await chat.send(type="delete_session")
    frames = await read_turn(chat.recv)  # the running turn ends (cancelled, or done if it was quicker)
    assert frames[-1]["type"] == "done"
    assert (await chat.recv())["code"] == "session_deleted"
    assert await client.app[keys.transcripts].get(session["session_id"]) is None
    kv = await client.app[keys.engine].kv_placement([session["session_id"]])
    assert kv[session["session_id"]][0] == "none"


async def test_a_second_tab_is_shown_a_regenerate_and_follows_its_answer(connect):
    a, session = await connect()
    await a.turn("question", **GREEDY)
    b, _ = await connect(**_resume(session))
    path_a, text, done = await _branch_turn(a, type="regenerate", **GREEDY)
    path_b = await b.recv()
    assert path_b == path_a
    frames = await read_turn(b.recv)
    assert text_of(frames) == text and frames[-1]["message_id"] == done["message_id"]


async def test_the_tree_survives_a_restart(aiohttp_client, tiny_model, server_config):
    from chatserver.app import create_app

    first_app = await aiohttp_client(create_app(server_config, model=tiny_model))
    chat = Chat(await first_app.ws_connect("/ws"))
    session = await chat.hello()
    _, first = await chat.turn("question", **GREEDY)
    _, _, done = await _branch_turn(chat, type="regenerate", max_tokens=8, temperature=1.0, seed=1)
    await chat.ws.close()
    await first_app.close()

    second = await aiohttp_client(create_app(server_config, model=tiny_model))
    chat = Chat(await second.ws_connect("/ws"))
    resumed = await chat.hello(**_resume(session))
    assert resumed["messages"][-1]["siblings"] == [first["message_id"], done["message_id"]]
    await chat.send(type="switch", message_id=first["message_id"])
    assert (await chat.recv())["messages"][-1]["id"] == first["message_id"]
    _, again = await chat.turn("next", **GREEDY)
    assert again["usage"]["cached_tokens"] > 0
