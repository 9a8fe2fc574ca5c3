"""The terminal client in a cluster: it puts the session id in the WebSocket URL's query (where HAProxy
reads it), and a session another replica serves (`session_elsewhere`) is asked for again after the
retry_after it was given, until the replica it reached can take it."""

from __future__ import annotations

import asyncio
import sys

from chatserver.app import create_app
from chatserver.client import session_url
from chatserver.config import ChatConfig, ServerConfig
from engine import EngineConfig
from storage import StorageConfig
from tests.helpers.chat import Chat
from tests.helpers.paths import REPO


def test_the_session_id_goes_in_the_query():
    assert session_url("ws://127.0.0.1:8080/ws", "ab12") == "ws://127.0.0.1:8080/ws?session=ab12"
    assert session_url("wss://h/ws?x=1&session=old", "ab12") == "wss://h/ws?x=1&session=ab12"
    assert session_url("ws://h/ws", None) == "ws://h/ws"


async def _replica(aiohttp_client, tiny_model, tmp_path, name: str, database_url: str):
    config = ServerConfig(data_dir=tmp_path / name, storage=StorageConfig(database_url=database_url),
                          chat=ChatConfig(replica_name=name, lease_seconds=3.0),
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


async def test_a_session_served_elsewhere_is_asked_for_again_after_retry_after(aiohttp_client, tiny_model, tmp_path,
                                                                               database_url):
    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url)
    r2 = await _replica(aiohttp_client, tiny_model, tmp_path, "r2", database_url)
    chat = Chat(await r1.ws_connect("/ws"))
    session = await chat.hello()
    await chat.turn("Hello", max_tokens=4, temperature=0)  # stored; r1 holds its lease while connected

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatserver", "chat", "--url", f"ws://127.0.0.1:{r2.server.port}/ws",
        "--session", session["session_id"], f"--token={session['resume_token']}", cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(1.5)  # the client was refused by r2 and waits
    await chat.ws.close()  # r1 lets the session go
    out, err = await asyncio.wait_for(proc.communicate(b"/quit\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert "[replica r1 serves this session; asking again in" in err.decode()
    assert f"session {session['session_id']} (resumed)" in out.decode()
    assert "[user] Hello" in out.decode()
