"""The OpenAI-compatible API, driven by the official `openai` client against the real server and model."""

import asyncio
import json
import urllib.error
import urllib.request

import openai
import pytest

from engine.model.chat_format import ChatMessage
from engine.model.reference import greedy_answer
from tests.helpers.paths import MODEL_CACHE
from tests.helpers.real_server import RealServer, serving

pytestmark = [pytest.mark.real_server]

KEY = "sk-test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("data"), "--api-key", KEY)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model_id(client) -> str:
    return client.models.list().data[0].id


def _generate(real_model, messages: list[dict], max_tokens: int) -> str:
    return greedy_answer(real_model, [ChatMessage(m["role"], m["content"]) for m in messages], max_tokens)


def test_models_are_listed_and_unknown_ones_are_404(client, model_id):
    assert model_id and client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


def test_greedy_completion_equals_transformers_generate(client, model_id, real_model):
    reply = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.message.content == _generate(real_model, QUESTION, 24)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_gives_the_same_answer_with_a_final_usage_chunk(client, model_id):
    plain = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24)
    chunks = list(client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_a_growing_stateless_conversation_reuses_its_kv(client, model_id):
    messages = [{"role": "system", "content": "You are a helpful travel guide. " * 8},
                {"role": "user", "content": "Suggest a city to visit in Italy."}]
    first = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=32)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "What food should I try there?"}]
    second = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=16)
    # everything the first request computed (its prompt and answer) is reused, not recomputed
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_session_header_keeps_the_kv_of_that_session(client, model_id):
    headers = {"X-Session-Id": "client-chosen-42"}
    messages = [{"role": "user", "content": "Name a famous painter."}]
    first = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=16,
                                           extra_headers=headers)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Name one of their works."}]
    second = client.chat.completions.create(model=model_id, messages=messages, temperature=0, max_tokens=8,
                                            extra_headers=headers)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_stop_sequence_cuts_the_answer(client, model_id):
    full = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24)
    text = full.choices[0].message.content
    stop = text.split()[2]  # a word from the middle of the answer
    cut = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=24,
                                              stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[:text.index(stop)]


async def test_async_client_streaming_and_plain(aclient, model_id):
    plain, stream = await asyncio.gather(
        aclient.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=16),
        aclient.chat.completions.create(model=model_id, messages=QUESTION, temperature=0, max_tokens=16, stream=True))
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == plain.choices[0].message.content  # batched together, same greedy answer
    seeded = [await aclient.chat.completions.create(model=model_id, messages=QUESTION, temperature=0.9, seed=7,
                                                    max_tokens=16) for _ in range(2)]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content


def test_errors_map_to_the_clients_exception_types(client, model_id, server):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_id, messages=QUESTION, n=2)
    assert exc.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_id, messages=QUESTION, temperature=7)
    assert exc.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[])
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "hi " * 9000}])
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-9", messages=QUESTION)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=model_id, messages=QUESTION)


def test_oversized_and_malformed_bodies_get_openai_errors(server):
    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(server.url + "/v1/chat/completions", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    status, body = post(b"x" * (3 << 20))
    assert status == 413 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body = post(b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = post(b"[" * 100_000)  # nesting too deep for the parser (100 KB)
    assert status == 400 and body["error"]["type"] == "invalid_request_error", body
    status, body = post(json.dumps({"model": "m", "messages": "hello"}).encode())
    assert status == 400 and body["error"]["param"] == "messages"


def test_overload_is_a_429_rate_limit_error(tmp_path):
    srv = RealServer(tmp_path, MODEL_CACHE, "--max-queue", "1").start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        busy = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=64, stream=True)
        next(iter(busy))  # admitted and running
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=model, messages=QUESTION, max_tokens=4)
        busy.close()
    finally:
        srv.stop()


def test_a_stateless_conversation_finds_its_kv_on_disk_after_a_restart(tmp_path):
    messages = [{"role": "user", "content": "Tell me about the history of tea in three sentences."}]
    srv = RealServer(tmp_path, MODEL_CACHE).start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        first = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32)
    finally:
        assert srv.stop() == 0  # SIGTERM spills the KV to disk
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And coffee?"}]
    srv = RealServer(tmp_path, MODEL_CACHE).start()
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        second = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=8)
        assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    finally:
        srv.stop()
