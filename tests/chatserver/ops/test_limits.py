"""Configurable limits through the real aiohttp app (tiny model): connections in total and per client
address, turns per minute per session, heartbeat and idle timeout."""

import asyncio

import aiohttp
import pytest
from aiohttp import WSMsgType

from chatserver import keys
from chatserver.ops.limits import TurnRate
from tests.helpers.chat import Chat
from tests.helpers.polling import wait_until


async def _refused_status(client) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws")
    return refused.value.status


async def test_connections_per_client_address_are_capped_and_freed_on_close(make_client):
    client = await make_client(http={'max_connections_per_client': 2})
    first, second = await client.ws_connect("/ws"), await client.ws_connect("/ws")
    assert await _refused_status(client) == 429
    chat = Chat(second)
    assert (await chat.hello())["type"] == "session"  # the admitted ones keep working
    await first.close()
    # the server notices the close asynchronously
    await wait_until(lambda: client.app[keys.connection_gate].total < 2, what="the closed connection released")
    third = Chat(await client.ws_connect("/ws"))
    assert (await third.hello())["type"] == "session"


async def test_total_connections_are_capped(make_client):
    client = await make_client(http={'max_connections': 2, 'max_connections_per_client': 10})
    held = [await client.ws_connect("/ws") for _ in range(2)]
    assert await _refused_status(client) == 503
    for ws in held:
        await ws.close()


async def test_turns_per_minute_per_session_refuse_with_nothing_stored(make_client):
    client = await make_client(chat={'turns_per_minute': 2})
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello()
    for n in range(2):
        _, done = await chat.turn(f"question {n}", max_tokens=4, temperature=0)
        assert done["type"] == "done"
    text, refused = await chat.turn("one too many", max_tokens=4, temperature=0)
    assert refused["type"] == "error" and refused["code"] == "rate_limited" and text == ""
    stored = await client.app[keys.transcripts].messages(session["session_id"])
    assert [m.content for m in stored if m.role == "user"] == ["question 0", "question 1"]

    # reconnecting does not reset the window
    again = Chat(await client.ws_connect("/ws"))
    await again.hello(session_id=session["session_id"], resume_token=session["resume_token"])
    _, refused = await again.turn("after reconnecting", max_tokens=4, temperature=0)
    assert refused["code"] == "rate_limited"


def test_turn_rate_window_slides():
    now = [0.0]
    rate = TurnRate(2, clock=lambda: now[0])
    rate.check("s"), rate.check("s")
    with pytest.raises(Exception, match="2 turns per minute"):
        rate.check("s")
    rate.check("other")  # per session
    now[0] = 60.0
    rate.check("s")  # the first two have left the window


async def test_an_idle_connection_is_closed_with_1000(make_client):
    client = await make_client(http={'ws_idle_timeout_s': 0.4})
    chat = Chat(await client.ws_connect("/ws"))
    await chat.hello()
    _, done = await chat.turn("hello", max_tokens=4, temperature=0)
    assert done["type"] == "done"
    closed = await chat.ws.receive(timeout=5)
    assert closed.type == WSMsgType.CLOSE and closed.data == 1000 and closed.extra == "idle timeout"


async def test_a_client_that_stops_answering_pings_is_disconnected(make_client):
    client = await make_client(http={'ws_heartbeat_s': 0.3})
    ws = await client.ws_connect("/ws", autoping=False)  # pings arrive but are never answered
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        msg = await ws.receive(timeout=5)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
        assert msg.type == WSMsgType.PING
    else:
        pytest.fail("the server kept a client that never answered its pings")
    await wait_until(lambda: client.app[keys.connection_gate].total == 0, what="the dead connection's place freed")


async def test_allowed_origins_extend_the_same_host_rule(make_client):
    client = await make_client(http={"allowed_origins": ("https://chat.example",)})
    ok = await client.ws_connect("/ws", headers={"Origin": "https://chat.example"})
    await ok.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403


async def test_a_running_turn_is_not_cut_by_the_idle_timeout(make_client):
    client = await make_client(http={'ws_idle_timeout_s': 0.02})
    chat = Chat(await client.ws_connect("/ws"))
    await chat.send(type="hello")  # both frames at once: the connection is never idle before the turn
    await chat.send(type="user", content="tell me everything", max_tokens=64, temperature=0)
    assert (await chat.recv())["type"] == "session"
    frames = []
    while not frames or frames[-1]["type"] == "token":
        frames.append(await chat.recv())
    done = frames[-1]
    assert done["type"] == "done" and len(frames) > 1
    assert done["timings"]["decode_ms"] > 20 * 2, "the turn must outlast the idle timeout for this test to mean anything"
    closed = await chat.ws.receive(timeout=5)
    assert closed.type == WSMsgType.CLOSE and closed.extra == "idle timeout"


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(make_client):
    """Every user behind a reverse proxy shares its address: the per-address limit counts the address
    the trusted proxy forwards, and ignores the header from anyone else (who could pick any address)."""
    proxied = await make_client(http={"max_connections_per_client": 1, "trusted_proxies": ("127.0.0.0/8",)})
    alice = await proxied.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.7"})
    bob = await proxied.ws_connect("/ws", headers={"X-Forwarded-For": "198.51.100.9, 127.0.0.1"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxied.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.7"})
    assert refused.value.status == 429
    for ws in (alice, bob):
        await ws.close()


async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(make_client):
    client = await make_client(http={"max_connections_per_client": 1})
    first = await client.ws_connect("/ws", headers={"X-Forwarded-For": "203.0.113.7"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/ws", headers={"X-Forwarded-For": "198.51.100.9"})
    assert refused.value.status == 429
    await first.close()


def test_a_bad_trusted_proxy_is_refused_at_start():
    from chatserver.ops import ConnectionGate

    with pytest.raises(ValueError):
        ConnectionGate(10, 10, ("not-an-address",))


async def test_the_defaults_let_one_address_hold_more_than_a_handful_of_connections(make_client):
    """Behind an office NAT or a proxy every user shares one address: 40 tabs from one address open."""
    client = await make_client()
    opened = [await client.ws_connect("/ws") for _ in range(40)]
    assert (await Chat(opened[-1]).hello())["type"] == "session"
    for ws in opened:
        await ws.close()
