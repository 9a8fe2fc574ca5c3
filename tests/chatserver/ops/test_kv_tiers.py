"""Session KV across disconnects and restarts, through the app (tiny model)."""


from chatserver import keys
from chatserver.app import create_app
from chatserver.config import ServerConfig
from engine import EngineConfig, KVStoreConfig
from storage import StorageConfig
from tests.helpers.chat import Chat
from tests.helpers.polling import wait_until


def _config(tmp_path, storage: StorageConfig, **kv) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path, storage=storage,
                        engine=EngineConfig(max_context=1024, max_new_tokens=64, kv=KVStoreConfig(**kv)))


async def _tier(client, session_id: str) -> str:
    return (await client.app[keys.engine].kv_placement([session_id]))[session_id][0]


async def _kv_stats(client) -> dict:
    return (await client.app[keys.engine].stats())["kv"]


async def _open(client, **hello):
    chat = Chat(await client.ws_connect("/ws"))
    return chat, await chat.hello(**hello)


async def test_restart_resumes_warm_from_disk_and_a_corrupt_file_recomputes(aiohttp_client, tiny_model, tmp_path,
        storage_config):
    client = await aiohttp_client(create_app(_config(tmp_path, storage_config), model=tiny_model))
    sessions = []
    for _ in range(2):
        chat, session = await _open(client)
        _, done = await chat.turn("The same opening line", max_tokens=8, temperature=0)
        sessions.append((session, done))
        await chat.ws.close()
    await client.close()  # graceful shutdown spills both sessions
    # one manifest per session; the KV of their identical conversations is stored once
    assert len(list((tmp_path / "kv" / "sessions").iterdir())) == 2
    assert len(list((tmp_path / "kv" / "chunks").iterdir())) == 1

    # damage the second session's manifest
    client = await aiohttp_client(create_app(_config(tmp_path, storage_config), model=tiny_model))
    disk = client.app[keys.kv_files]
    damaged = disk.sessions_dir / (disk.file_name(sessions[1][0]["session_id"]) + ".json")
    damaged.write_bytes(damaged.read_bytes()[:-64])

    answers = []
    for (session, first), file_ok in zip(sessions, [True, False]):
        chat, resumed = await _open(client, session_id=session["session_id"], resume_token=session["resume_token"])
        text, done = await chat.turn("and a question", max_tokens=8, temperature=0)
        assert done["type"] == "done"
        if file_ok:
            assert done["cache"] == "disk" and done["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1
        else:
            # its own file is refused; the same conversation's KV, held by the first session, is shared
            assert done["cache"] == "ram" and done["usage"]["cached_tokens"] > 0
        answers.append(text)
    assert answers[0] == answers[1]  # same conversation: restored and shared KV answer alike
    stats = await _kv_stats(client)
    assert stats["recomputes"] == 1 and stats["restore_failures"] == {"corrupt": 1}


async def test_spill_on_disconnect_and_prefetch_on_resume(aiohttp_client, tiny_model, tmp_path,
        storage_config):
    client = await aiohttp_client(create_app(_config(tmp_path, storage_config, spill_on_disconnect=True), model=tiny_model))
    chat, session = await _open(client)
    await chat.turn("hello", max_tokens=4, temperature=0)
    await chat.ws.close()
    sid = session["session_id"]

    async def on_disk() -> bool:
        return await _tier(client, sid) == "disk"

    await wait_until(on_disk)

    async def restored() -> bool:
        return (await _kv_stats(client))["restores"] == 1

    chat, _ = await _open(client, session_id=sid, resume_token=session["resume_token"])
    await wait_until(restored)  # read back before any turn was sent
    _, done = await chat.turn("again", max_tokens=4, temperature=0)
    assert done["cache"] == "disk" and done["usage"]["cached_tokens"] > 0


async def test_ram_limit_spills_other_sessions_and_all_answers_complete(aiohttp_client, tiny_model, tmp_path,
        storage_config):
    # the tiny model's KV is 256 bytes per token in float16, reserved in 256-token steps (64 KB):
    # 150 KB of RAM holds two of these sessions
    limit = 150_000
    config = _config(tmp_path, storage_config, max_ram_bytes=limit)
    client = await aiohttp_client(create_app(config, model=tiny_model))
    chats = [await _open(client) for _ in range(4)]
    for chat, _ in chats:
        _, done = await chat.turn("a message " * 20, max_tokens=8, temperature=0)
        assert done["type"] == "done"
        assert (await _kv_stats(client))["ram"]["bytes"] <= limit
    tiers = [await _tier(client, s["session_id"]) for _, s in chats]
    assert "disk" in tiers
    for chat, _ in chats:
        _, done = await chat.turn("more", max_tokens=4, temperature=0)
        assert done["type"] == "done" and done["usage"]["cached_tokens"] > 0
