"""Replicas sharing one database and one Redis (--redis-url), through the app (tiny model): a session
another replica served goes on warm from the shared tier, its past not recomputed, its answers those of
one server; a Redis that stops answering leaves turns working and /readyz degraded."""

from chatserver import keys
from chatserver.app import create_app
from chatserver.config import HttpConfig, ServerConfig
from engine import EngineConfig
from storage import StorageConfig
from tests.helpers.admin import ADMIN_TOKEN
from tests.helpers.chat import Chat
from tests.helpers.redis_server import redis_server, redis_url  # noqa: F401 - fixtures

LONG = "Notes from the harbour meeting: the ship carried grain, the crates went to the old mill. " * 12


async def _replica(aiohttp_client, tiny_model, data_dir, database_url: str, redis: str | None):
    config = ServerConfig(data_dir=data_dir, http=HttpConfig(admin_token=ADMIN_TOKEN),
                          storage=StorageConfig(database_url=database_url, redis_url=redis),
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


async def _open(client, **hello) -> tuple[Chat, dict]:
    chat = Chat(await client.ws_connect("/ws"))
    return chat, await chat.hello(**hello)


async def test_a_session_goes_on_warm_on_another_replica(aiohttp_client, tiny_model, tmp_path, database_url, redis_url):
    a = await _replica(aiohttp_client, tiny_model, tmp_path / "a", database_url, redis_url)
    b = await _replica(aiohttp_client, tiny_model, tmp_path / "b", database_url, redis_url)
    chat, session = await _open(a)
    _, first = await chat.turn(LONG + "Where did the crates go?", max_tokens=12, temperature=0)
    twin, _ = await _open(a)  # the same conversation, staying on replica A: what one server answers
    await twin.turn(LONG + "Where did the crates go?", max_tokens=12, temperature=0)
    await chat.ws.close()

    moved, resumed = await _open(b, session_id=session["session_id"], resume_token=session["resume_token"])
    assert resumed["type"] == "session"
    text, done = await moved.turn("And the grain?", max_tokens=12, temperature=0)
    alone, alone_done = await twin.turn("And the grain?", max_tokens=12, temperature=0)
    # the past is not recomputed: as much KV reused as on the replica that holds it in RAM
    assert done["cache"] == "shared" and alone_done["cache"] == "ram"
    assert done["usage"]["cached_tokens"] == alone_done["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1
    assert text == alone
    stats = (await (await b.get("/api/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).json())["kv"]
    assert stats["hits_shared"] == 1 and stats["shared_tier"]["head_hits"] == 1
    metrics = await (await b.get("/metrics")).text()
    assert 'chatserver_kv_lookups_total{result="shared"} 1.0' in metrics and "chatserver_redis_memory_bytes" in metrics


async def test_without_redis_turns_go_on_and_ready_says_degraded(aiohttp_client, tiny_model, tmp_path, database_url):
    dead = "redis://127.0.0.1:1/0"  # nothing listens there
    a = await _replica(aiohttp_client, tiny_model, tmp_path / "a", database_url, dead)
    chat, _ = await _open(a)
    text, done = await chat.turn("Hello there", max_tokens=6, temperature=0)
    assert done["type"] == "done" and text
    text, done = await chat.turn("And again", max_tokens=6, temperature=0)
    assert done["type"] == "done" and done["cache"] == "ram"
    ready = await (await a.get("/readyz")).json()
    assert ready["status"] == "degraded" and ready["checks"]["kv_shared"] is False and ready["kv_shared_error"]
    metrics = await (await a.get("/metrics")).text()
    assert "chatserver_kv_shared_up 0.0" in metrics
    assert a.app[keys.kv_files].shared_stats.num_errors >= 1
