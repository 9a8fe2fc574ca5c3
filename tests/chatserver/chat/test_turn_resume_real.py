"""An answer outlives its socket, with the real model through `python -m chatserver serve`: a client that
drops mid-answer and resumes with last_seq reads exactly the greedy answer it would have read without the
drop; a server killed mid-answer tells the resuming client the turn was interrupted, and keeps the
answer streamed up to its last checkpoint."""

from __future__ import annotations

import json
import signal
import time

import pytest
import websockets

from tests.helpers.chat import bare
from tests.helpers.paths import MODEL_CACHE
from tests.helpers.real_server import RealServer, WsChat, serving
from tests.helpers.turn_frames import assert_one_turn_in_order, read_turn, text_of

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

QUESTION = "Write a long story about a ship."
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("data"))


def _recv(chat: WsChat):
    async def recv() -> dict:
        return json.loads(await chat.ws.recv())

    return recv


async def _ask(chat: WsChat, content: str = QUESTION, max_tokens: int = MAX_TOKENS) -> None:
    await chat.ws.send(json.dumps({"type": "user", "content": content, "max_tokens": max_tokens, "temperature": 0}))


@pytest.mark.parametrize("drop_after", [1, 12, 40])
async def test_a_resumed_answer_equals_the_uninterrupted_greedy_answer(server, drop_after):
    alone, _ = await WsChat.open(server.ws_url)
    want, want_done = await alone.turn(QUESTION, max_tokens=MAX_TOKENS, temperature=0)
    await alone.close()
    assert want_done["usage"]["completion_tokens"] > 40, want_done  # long enough to drop at every point

    chat, session = await WsChat.open(server.ws_url)
    await _ask(chat)
    held = [json.loads(await chat.ws.recv()) for _ in range(drop_after)]
    chat.ws.transport.abort()  # the socket drops: no close handshake (a train enters a tunnel)
    again, resumed = await WsChat.open(server.ws_url, session_id=session["session_id"],
                                       resume_token=session["resume_token"],
                                       last_seq={"turn_id": held[-1]["turn_id"], "seq": held[-1]["seq"]})
    assert resumed["turn"]["turn_id"] == held[0]["turn_id"]
    frames = held + await read_turn(_recv(again))
    assert_one_turn_in_order(frames)
    assert text_of(frames) == want and frames[-1]["finish_reason"] == want_done["finish_reason"]
    # the transcript holds the answer once, whole
    await again.close()
    later, resumed = await WsChat.open(server.ws_url, session_id=session["session_id"],
                                       resume_token=session["resume_token"])
    assert bare(resumed["messages"][-1]) == {"role": "assistant", "content": want,
                                       "finish_reason": want_done["finish_reason"]}
    await later.close()


async def test_a_turn_killed_with_the_server_keeps_its_checkpointed_text_as_the_interrupted_answer(tmp_path):
    """kill -9 mid-answer: after the restart the answer holds the text streamed up to its last checkpoint
    (--draft-seconds, default 1 s), marked interrupted, and the conversation goes on."""
    question = "Write a long story about a lighthouse keeper."
    srv = RealServer(tmp_path, MODEL_CACHE).start()
    chat, session = await WsChat.open(srv.ws_url)
    await _ask(chat, question, max_tokens=400)
    received, first_token_at = "", None
    while first_token_at is None or time.monotonic() - first_token_at < 1.5:  # a checkpoint is due after 1 s
        frame = json.loads(await chat.ws.recv())
        assert frame["type"] == "token", frame  # 400 tokens take longer than this
        received += frame["text"]
        first_token_at = first_token_at or time.monotonic()
    srv.stop(signal.SIGKILL)
    srv.proc.stdout.close()
    try:  # the frames the server sent before it died
        while True:
            received += json.loads(await chat.ws.recv())["text"]
    except websockets.ConnectionClosed:
        pass

    srv = RealServer(tmp_path, MODEL_CACHE).start()
    try:
        chat, resumed = await WsChat.open(srv.ws_url, session_id=session["session_id"],
                                          resume_token=session["resume_token"])
        asked, answer = [bare(m) for m in resumed["messages"]]
        assert asked == {"role": "user", "content": question}
        assert answer["finish_reason"] == "interrupted"
        assert answer["content"] and received.startswith(answer["content"]), (answer, received)
        assert resumed["busy"] is False and resumed["turn"] is None
        text, done = await chat.turn("Then just give it a title.", max_tokens=16, temperature=0)
        assert done["type"] == "done" and text
        await chat.close()
    finally:
        srv.stop()
