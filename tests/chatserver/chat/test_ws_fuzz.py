"""Hostile WebSocket frames against the real server: hypothesis-generated JSON of every shape (wrong
types, huge numbers, NaN, long strings, nesting deeper than the JSON parser's recursion limit), non-JSON
text, binary frames, oversized frames. Each gets a typed error frame, or a turn when the frame happens
to be valid, or a close with 1009 when too large; never an internal error. Meanwhile another session's answer is unaffected and the engine keeps going."""

import asyncio
import json

import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.helpers.real_server import WsChat, serving

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

TYPED = {"bad_request", "busy", "unauthorized", "session_not_found", "context_length_exceeded", "overloaded",
         "rate_limited", "storage_unavailable"}
MAX_FRAME = 256 << 10  # room for nesting the parser refuses: 1000 levels of '{"a":' are 5 KB
# resumes a session that does not exist: session_not_found, or busy while a turn the fuzz frame started runs
SENTINEL = json.dumps({"type": "hello", "session_id": "0" * 32, "resume_token": "x"})

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                             max_size=4), max_leaves=12)
fields = st.sampled_from(["content", "max_tokens", "temperature", "top_p", "top_k", "seed", "session_id",
                          "resume_token", "type"])
frames = st.fixed_dictionaries({"type": st.sampled_from(["hello", "user", "system", "cancel", "token", "", "USER"])},
                               optional={"content": st.text(max_size=200) | values,
                                         "max_tokens": st.integers(min_value=-5, max_value=2**64) | values}
                               ).flatmap(lambda d: st.dictionaries(fields, values, max_size=3).map(lambda x: {**x, **d}))
# "[[[..." , '{"a":{"a":...', "[[...]]" alone or as an ignored field of a valid frame: 1000 to 200000 levels
nested = st.tuples(st.integers(1000, 200_000), st.sampled_from(["[", '{"a":', "[]"])).map(
    lambda a: "[" * a[0] + "]" * a[0] if a[1] == "[]" else a[1] * a[0])
messages = (frames.map(lambda f: ("text", json.dumps(f, allow_nan=True)))
            | nested.map(lambda n: ("text", n))
            | nested.map(lambda n: ("text", '{"type": "user", "content": "hi", "x": ' + n + "}"))
            | values.map(lambda v: ("text", json.dumps(v, allow_nan=True)))
            | st.text(max_size=200).map(lambda t: ("text", t))
            | st.binary(max_size=200).map(lambda b: ("binary", b))
            | st.integers(min_value=MAX_FRAME + 1, max_value=3 * MAX_FRAME).map(lambda n: ("text", "x" * n)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("wsfuzz"), "--max-frame-bytes", str(MAX_FRAME), "--max-new-tokens", "4",
                       "--turns-per-minute", "0")


def _answer(url: str) -> str:
    async def run():
        chat, _ = await WsChat.open(url)
        text, done = await chat.turn("Name three colors.", max_tokens=4, temperature=0)
        await chat.close()
        assert done["type"] == "done", done
        return text
    return asyncio.run(run())


def test_hostile_frames_get_typed_answers_and_disturb_no_one(server):
    before = _answer(server.ws_url)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(messages)
    @example(("text", json.dumps({"type": "system", "content": "Be brief."})))  # valid, and never answered
    @example(("text", json.dumps({"type": "user", "content": "hi", "temperature": float("nan")})))
    @example(("text", "[" * 100_000))  # 100 KB, under the frame limit
    def one(message):
        kind, payload = message
        with connect(server.ws_url, max_size=None) as ws:
            ws.send(json.dumps({"type": "hello"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "session"
            ws.send(payload)  # str: a text frame, bytes: a binary one
            try:
                # (an oversized frame may have closed the socket before this is sent)
                ws.send(SENTINEL)  # always answered (a valid `system` frame, for one, is not)
                while True:
                    frame = json.loads(ws.recv(timeout=60))
                    assert frame["type"] in ("error", "session", "token", "done"), frame
                    if frame["type"] == "error":
                        assert frame["code"] in TYPED, (payload[:200], frame)
                        if frame["code"] in ("session_not_found", "busy"):  # the sentinel's answer
                            break
            except websockets.ConnectionClosed as closed:
                assert len(payload) > MAX_FRAME and closed.rcvd.code == 1009, (len(payload), closed)

    one()
    assert _answer(server.ws_url) == before  # the engine still runs, and answers exactly as before
