"""Greedy parity on every branch, with the real model through the real server in its exact mode: a
regenerated answer, an edited question's answer and a question asked after switching back to an earlier
branch each equal what transformers' generate() answers on that branch's transcript, recomputed whole;
and each reuses the KV it should (cached_tokens)."""

import json

import pytest

from engine.model.chat_format import ChatMessage
from engine.model.reference import greedy_answer
from tests.helpers.real_server import WsChat, serving

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

MAX_TOKENS = 32


@pytest.fixture(scope="module")
def exact_server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("data"), "--kv-dtype", "float32", "--activations", "float32")


async def _frames(chat: WsChat, **frame) -> tuple[list[dict], str, dict]:
    """Send a frame that starts a turn; (frames before its tokens, its answer, its done frame)."""
    await chat.ws.send(json.dumps({"max_tokens": MAX_TOKENS, "temperature": 0, **frame}))
    before, text = [], ""
    while True:
        f = json.loads(await chat.ws.recv())
        if f["type"] == "token":
            text += f["text"]
        elif f["type"] == "done":
            return before, text, f
        elif f["type"] == "error":
            raise AssertionError(f)
        else:
            before.append(f)


async def test_every_branch_answers_as_transformers_does_on_its_transcript(exact_server, real_model):
    chat, _ = await WsChat.open(exact_server.ws_url)
    q1, q2, q2_edited, q3 = ("What is the capital of France?", "What is it famous for?",
                             "What river runs through it?", "Name one museum there.")
    _, a1, first = await _frames(chat, type="user", content=q1)
    _, a2, second = await _frames(chat, type="user", content=q2)
    history = [ChatMessage("user", q1), ChatMessage("assistant", a1), ChatMessage("user", q2)]
    assert a2 == greedy_answer(real_model, history, MAX_TOKENS)

    _, again, regenerated = await _frames(chat, type="regenerate")
    assert again == a2  # greedy: the same question, the same answer
    assert regenerated["usage"]["cached_tokens"] == regenerated["usage"]["prompt_tokens"]  # no prefill at all

    _, edited_answer, edited = await _frames(chat, type="edit", message_id=second["user_message_id"],
                                             content=q2_edited)
    assert edited_answer == greedy_answer(real_model, history[:2] + [ChatMessage("user", q2_edited)], MAX_TOKENS)
    before_q2 = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"] - 1
    assert edited["usage"]["cached_tokens"] >= before_q2

    await chat.ws.send(json.dumps({"type": "switch", "message_id": second["message_id"]}))
    assert json.loads(await chat.ws.recv())["messages"][-1]["content"] == a2
    _, a3, third = await _frames(chat, type="user", content=q3)
    back = history + [ChatMessage("assistant", a2), ChatMessage("user", q3)]
    assert a3 == greedy_answer(real_model, back, MAX_TOKENS)
    # the first branch's KV was kept beside the edited one: only the new question is computed
    before_q3 = second["usage"]["prompt_tokens"] + second["usage"]["completion_tokens"] - 1
    assert third["usage"]["cached_tokens"] >= before_q3
    assert third["cache"] == "ram"
    await chat.close()
