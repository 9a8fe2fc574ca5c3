"""An error after an SSE stream has started travels as a `data: {"error": ...}` event (in-process, tiny model)."""

import json

import openai
import pytest

from chatserver import keys


async def _model_id(client) -> str:
    return (await (await client.get("/v1/models")).json())["data"][0]["id"]


def _fail_after(engine, steps: int) -> None:
    """The engine's forward pass raises from its `steps`-th call on (a bug or a broken kernel)."""
    forward, calls = engine.runner.forward, [0]

    def flaky(items):
        calls[0] += 1
        if calls[0] > steps:
            raise RuntimeError("simulated kernel fault")
        return forward(items)

    engine.runner.forward = flaky


async def test_a_failure_after_the_first_chunks_is_an_error_event_then_done(client):
    _fail_after(client.app[keys.engine].engine, steps=4)
    body = {"model": await _model_id(client), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
            "stream": True, "temperature": 0}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks[:-1]), chunks
    error = chunks[-1]["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "simulated kernel fault" in error["message"]


async def test_the_official_client_raises_api_error_mid_stream(client):
    _fail_after(client.app[keys.engine].engine, steps=4)
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    stream = await api.chat.completions.create(model=await _model_id(client), messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=40, stream=True, temperature=0)
    received = []
    with pytest.raises(openai.APIError, match="simulated kernel fault"):
        async for chunk in stream:
            received.append(chunk)
    assert received, "the error came after the first chunks"
    await api.close()


async def test_the_server_still_answers_after_the_failure(client):
    engine = client.app[keys.engine].engine
    forward = engine.runner.forward
    _fail_after(engine, steps=2)
    body = {"model": await _model_id(client), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0}
    assert (await client.post("/v1/chat/completions", json=body)).status == 500
    engine.runner.forward = forward
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] > 0
