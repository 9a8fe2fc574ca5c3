"""The admin API names the replica: a session's detail says which replica answered and which one its lease
in the database names (the one serving it, then none once it is let go); a single server says null."""

from chatserver.app import create_app
from chatserver.config import ChatConfig, HttpConfig, ServerConfig
from engine import EngineConfig
from storage import StorageConfig
from tests.helpers.admin import ADMIN_AUTH, ADMIN_TOKEN
from tests.helpers.chat import Chat
from tests.helpers.polling import wait_until

AUTH = ADMIN_AUTH


async def _server(aiohttp_client, tiny_model, data_dir, database_url: str, name: str | None):
    config = ServerConfig(data_dir=data_dir, http=HttpConfig(admin_token=ADMIN_TOKEN),
                          storage=StorageConfig(database_url=database_url),
                          chat=ChatConfig(replica_name=name), engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


async def _detail(client, session_id: str) -> dict:
    resp = await client.get(f"/api/sessions/{session_id}", headers=AUTH)
    assert resp.status == 200
    return await resp.json()


async def test_the_session_detail_names_the_replica_and_the_lease_owner(aiohttp_client, tiny_model, tmp_path,
                                                                      database_url):
    r1 = await _server(aiohttp_client, tiny_model, tmp_path / "r1", database_url, "r1")
    r2 = await _server(aiohttp_client, tiny_model, tmp_path / "r2", database_url, "r2")
    chat = Chat(await r1.ws_connect("/ws"))
    session = await chat.hello()
    await chat.turn("Hello", max_tokens=4, temperature=0)
    sid = session["session_id"]

    on_r1, on_r2 = await _detail(r1, sid), await _detail(r2, sid)
    assert (on_r1["replica"], on_r1["lease_owner"]) == ("r1", "r1")
    assert (on_r2["replica"], on_r2["lease_owner"]) == ("r2", "r1")  # asked elsewhere: who serves it

    await chat.ws.close()  # idle on r1: its lease is released

    async def released() -> bool:
        return (await _detail(r2, sid))["lease_owner"] is None

    await wait_until(released, what="r1 released the session")


async def test_a_single_server_names_no_replica(aiohttp_client, tiny_model, tmp_path, database_url):
    server = await _server(aiohttp_client, tiny_model, tmp_path, database_url, None)
    chat = Chat(await server.ws_connect("/ws"))
    session = await chat.hello()
    await chat.turn("Hello", max_tokens=4, temperature=0)
    detail = await _detail(server, session["session_id"])
    assert detail["replica"] is None and detail["lease_owner"] is None
