from __future__ import annotations

import json
from dataclasses import replace

import pytest

from chatserver.app import create_app
from chatserver.config import ServerConfig
from engine.config import EngineConfig


@pytest.fixture
def server_config(tmp_path) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path, engine=EngineConfig(max_context=1024, max_new_tokens=64, max_queue=8))


ADMIN_TOKEN = "operator-secret"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def admin(aiohttp_client, tiny_model, tmp_path):
    """The app with the admin API enabled (bearer ADMIN_TOKEN)."""
    config = ServerConfig(data_dir=tmp_path, admin_token=ADMIN_TOKEN,
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


@pytest.fixture
async def client(aiohttp_client, tiny_model, server_config):
    return await aiohttp_client(create_app(server_config, model=tiny_model))


@pytest.fixture
def make_client(aiohttp_client, tiny_model, tmp_path):
    async def make(**overrides):
        config = replace(ServerConfig(data_dir=tmp_path, engine=EngineConfig(max_context=1024, max_new_tokens=64)),
                         **overrides)
        return await aiohttp_client(create_app(config, model=tiny_model))

    return make


class Chat:
    """A test-side WebSocket chat: send frames, collect answers."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, **frame):
        await self.ws.send_str(json.dumps(frame))

    async def recv(self) -> dict:
        msg = await self.ws.receive(timeout=60)
        return json.loads(msg.data)

    async def hello(self, **kw) -> dict:
        await self.send(type="hello", **kw)
        return await self.recv()

    async def turn(self, content: str, **kw) -> tuple[str, dict]:
        """Send a user frame; return (streamed text, done or error frame)."""
        await self.send(type="user", content=content, **kw)
        text = ""
        while True:
            frame = await self.recv()
            if frame["type"] == "token":
                text += frame["text"]
            else:
                return text, frame


@pytest.fixture
def connect(client):
    async def open_chat(**hello) -> tuple[Chat, dict]:
        chat = Chat(await client.ws_connect("/ws"))
        return chat, await chat.hello(**hello)

    return open_chat
