"""A burst of short requests, with the default limits: admitted while the predicted wait allows it
(not turned away by a fixed queue length), refused with 429 + Retry-After beyond it (tiny model)."""

import asyncio

from chatserver import keys
from engine import EngineConfig

PROMPT_TOKENS = 800  # about the prompt below
SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}


async def _model_id(client) -> str:
    return (await (await client.get("/v1/models")).json())["data"][0]["id"]


async def test_a_burst_a_small_team_could_send_is_served_whole_with_the_defaults(make_client):
    client = await make_client()  # the default admission limits
    body = {**SHORT, "model": await _model_id(client)}
    statuses = await asyncio.gather(*[_status(client, body) for _ in range(150)])
    assert statuses.count(200) == 150, {s: statuses.count(s) for s in set(statuses)}


async def test_beyond_the_predicted_wait_turns_are_refused_with_retry_after_and_later_served(make_client):
    probe = await make_client()
    idle_ms = probe.app[keys.engine].engine.predicted_ttft_ms(PROMPT_TOKENS)  # this machine, measured at start
    # a bound that admits a few of these turns at once, not 40
    client = await make_client(engine=EngineConfig(max_context=1024, max_new_tokens=64, max_ttft_s=8 * idle_ms / 1000))
    model = await _model_id(client)

    def body(i: int) -> dict:  # prompts that share only the system prompt: each must be computed
        return {"model": model, "max_tokens": 64, "temperature": 0,
                "messages": [{"role": "user", "content": f"Question {i}. " + "Tell me about the sea. " * 120}]}

    responses = await asyncio.gather(*[client.post("/v1/chat/completions", json=body(i)) for i in range(40)])
    refused = [r for r in responses if r.status == 429]
    assert refused and any(r.status == 200 for r in responses)
    error = (await refused[0].json())["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
    assert int(refused[0].headers["Retry-After"]) >= 1
    metrics = await (await client.get("/metrics")).text()
    assert f'chatserver_turns_refused_total{{reason="predicted_wait"}} {float(len(refused))}' in metrics
    assert await _status(client, {**SHORT, "model": model}) == 200  # the burst passed: served again


async def _status(client, body: dict) -> int:
    response = await client.post("/v1/chat/completions", json=body)
    await response.read()
    return response.status
