"""Sessions that start alike share that beginning's KV, held once (real server, real model)."""

import json
import urllib.request

import openai
import pytest

from engine.model.chat_format import ChatFormat, ChatMessage
from engine.model.reference import greedy_answer
from tests.helpers.polling import wait_until
from tests.helpers.real_server import WsChat, serving

pytestmark = [pytest.mark.real_server]

ADMIN = "admin-secret"
# a long system prompt (about 500 tokens), as products put in front of every conversation
SYSTEM = ("You are the support assistant of Lumen Bikes, a small company that builds and repairs electric "
          "bicycles. Be friendly, precise and brief. ") + " ".join(
    f"Policy {i}: customers who report issue number {i} get a free inspection within {i % 7 + 1} days, "
    f"and parts listed in catalogue section {i * 3} are covered for {i % 4 + 1} years." for i in range(14))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(tmp_path_factory.mktemp("data"), "--admin-token", ADMIN)


def _admin(server, method: str, path: str) -> dict:
    request = urllib.request.Request(server.url + path, method=method, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def _stats(server) -> dict:
    return _admin(server, "GET", "/api/stats")


async def test_two_sessions_with_one_system_prompt_share_its_kv(server, real_model):
    fmt = ChatFormat(real_model.tokenizer, real_model.model.generation_config)
    system_tokens = len(fmt.render([ChatMessage("system", SYSTEM)]))
    assert system_tokens > 450
    first, hello1 = await WsChat.open(server.ws_url)
    await first.ws.send(json.dumps({"type": "system", "content": SYSTEM}))
    _, done1 = await first.turn("My battery does not charge.", temperature=0, max_tokens=24)
    assert done1["usage"]["cached_tokens"] == 0

    second, hello2 = await WsChat.open(server.ws_url)
    await second.ws.send(json.dumps({"type": "system", "content": SYSTEM}))
    text, done2 = await second.turn("How long is the warranty on brakes?", temperature=0, max_tokens=24)
    # the second session's first turn did not compute the system prompt again...
    assert done2["usage"]["cached_tokens"] >= system_tokens - 10
    # ...answers exactly as if it had...
    assert text == greedy_answer(real_model, [ChatMessage("system", SYSTEM),
                                          ChatMessage("user", "How long is the warranty on brakes?")], 24)
    # ...and the store holds that prompt once
    ram = _stats(server)["kv"]["ram"]
    token_bytes = 30 * 2 * 3 * 64 * 2  # layers x (k, v) x kv heads x head dim x float16 (the default)
    assert ram["shared_prefixes"] == 1
    assert system_tokens - 10 <= ram["shared_bytes"] // token_bytes <= system_tokens
    # the first session goes on as before, on the shared prefix
    _, done3 = await first.turn("Thanks, and the motor?", temperature=0, max_tokens=8)
    assert done3["usage"]["cached_tokens"] > system_tokens
    await first.close()
    await second.close()

    # with both sessions moved to disk, a third session with that system prompt still skips it:
    # the server reads one of them back and shares its beginning
    for hello in (hello1, hello2):
        _admin(server, "POST", f"/api/sessions/{hello['session_id']}/evict")
    await wait_until(lambda: _stats(server)["kv"]["ram"]["sessions"] == 0, interval=0.1, what="both sessions on disk")
    assert _stats(server)["kv"]["ram"]["shared_prefixes"] == 0
    third, _ = await WsChat.open(server.ws_url)
    await third.ws.send(json.dumps({"type": "system", "content": SYSTEM}))
    _, done4 = await third.turn("Do you sell helmets?", temperature=0, max_tokens=8)
    assert done4["usage"]["cached_tokens"] >= system_tokens - 10
    await third.close()


def test_openai_requests_of_different_conversations_share_the_system_prompt(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    for i, question in enumerate(["Do you repair tyres?", "Can I rent a bike?"]):
        reply = client.chat.completions.create(
            model=model, temperature=0, max_tokens=8,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
        # the WebSocket sessions above already hold this system prompt
        assert reply.usage.prompt_tokens_details.cached_tokens > 400
