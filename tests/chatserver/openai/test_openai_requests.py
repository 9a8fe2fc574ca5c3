"""What a client of /v1 sees for requests the server answers or refuses (in-process, tiny model): the response
shape the OpenAI schema requires, and an OpenAI-shaped error naming the problem for anything it cannot serve."""

import json

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chatserver.app import create_app

SERVED = ["GET /v1/models", "GET /v1/models/{model}", "POST /v1/chat/completions"]


async def _model_id(client) -> str:
    return (await (await client.get("/v1/models")).json())["data"][0]["id"]


def _is_openai_error(body: dict) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_plain_completion_has_the_message_fields_the_openai_schema_requires(client):
    body = {"model": await _model_id(client), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    message = (await resp.json())["choices"][0]["message"]
    # ChatCompletionResponseMessage: content, refusal and role are required (refusal may be null)
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert "refusal" in message and message["refusal"] is None


@pytest.mark.parametrize("method,path,status", [("POST", "/v1/completions", 404), ("POST", "/v1/embeddings", 404),
                                                ("GET", "/v1", 404), ("GET", "/v1/chat/completions", 405),
                                                ("DELETE", "/v1/models", 405)])
async def test_an_unserved_endpoint_is_named_and_the_served_ones_listed(client, method, path, status):
    resp = await client.request(method, path, json={"model": "m", "prompt": "hi"})
    assert resp.status == status
    body = await resp.json()
    assert _is_openai_error(body), body
    message = body["error"]["message"]
    assert f"no endpoint {method} {path}" in message, message
    assert "this server serves: " + ", ".join(SERVED) in message, message
    assert body["error"]["code"] == {404: "not_found", 405: "method_not_allowed"}[status]


async def test_the_list_of_served_endpoints_comes_from_the_router(aiohttp_client, tiny_model, server_config):
    async def embeddings(request: web.Request) -> web.Response:
        return web.json_response({})

    app = create_app(server_config, model=tiny_model)
    app.router.add_post("/v1/embeddings", embeddings)
    client = await aiohttp_client(app)
    message = (await (await client.post("/v1/completions", json={})).json())["error"]["message"]
    assert "POST /v1/embeddings" in message and "POST /v1/chat/completions" in message


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                                  {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                                  {"type": "file", "file": {"file_id": "file-abc"}}])
async def test_a_non_text_content_part_is_refused_by_name(client, part):
    content = [{"type": "text", "text": "What is in this?"}, part]
    body = {"model": await _model_id(client), "messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": content}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages[1].content[1]"
    assert error["message"] == f"messages[1].content[1]: only text content parts are supported (got {part['type']})"


async def test_text_content_parts_are_joined(client):
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]
    model = await _model_id(client)
    by_parts = await client.post("/v1/chat/completions", json={"model": model, "max_tokens": 6, "temperature": 0,
                                                               "messages": [{"role": "user", "content": parts}]})
    by_text = await client.post("/v1/chat/completions", json={"model": model, "max_tokens": 6, "temperature": 0,
                                                              "messages": [{"role": "user", "content": "Say hi"}]})
    assert by_parts.status == by_text.status == 200
    a, b = await by_parts.json(), await by_text.json()
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"]
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def _nested(n: int, form: str) -> str:
    return {"array": "[" * n, "object": '{"a":' * n, "closed": "[" * n + "]" * n}[form]


DEEP = ["[" * 100_000, '{"a":' * 100_000, '{"model": "m", "messages": ' + "[" * 100_000,
        '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 5000 + "]" * 5000 + "}"]


@pytest.mark.parametrize("raw", DEEP, ids=["arrays", "objects", "inside-a-request", "closed-inside-a-request"])
async def test_deeply_nested_json_is_a_400_like_any_malformed_body(client, raw):
    resp = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert _is_openai_error(body) and body["error"]["type"] == "invalid_request_error", body
    assert "nested too deeply" in body["error"]["message"], body
    # the server goes on answering
    ok = await client.post("/v1/chat/completions", json={"model": await _model_id(client), "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status == 200


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=50))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                             max_size=4), max_leaves=12)
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", ""])},
                              optional={"text": values, "image_url": values})
messages = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]),
                                  "content": st.text(max_size=40) | st.lists(parts, max_size=3) | values})
requests = st.fixed_dictionaries({"model": st.just("tiny-llama") | values, "messages": st.lists(messages, max_size=3)
                                  | values}, optional={"max_tokens": st.integers(-2, 4) | values, "stream": values})
deep = st.tuples(st.integers(1000, 200_000), st.sampled_from(["array", "object", "closed"])).map(lambda a: _nested(*a))
bodies = (requests.map(lambda r: json.dumps(r, allow_nan=True).encode())
          | values.map(lambda v: json.dumps(v, allow_nan=True).encode())
          | deep.map(str.encode)
          | deep.map(lambda d: (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "x": '
                                + d.encode() + b"}"))
          | st.binary(max_size=200))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies)
@example(b"[" * 100_000)
@example(b"\xff\xfe{")
async def test_hostile_bodies_get_openai_errors_never_a_500(client, raw):
    resp = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    if resp.status == 200:
        assert (await resp.read()), "a valid request is answered"
        return
    body = await resp.json()
    assert resp.status in (400, 404, 413) and _is_openai_error(body), (raw[:200], resp.status, body)
