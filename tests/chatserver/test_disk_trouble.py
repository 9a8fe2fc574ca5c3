"""The KV directory refusing writes (disk full) while spilling: the session keeps working by
recomputing, the temporary file is removed, /readyz says degraded, and all recovers when space returns.
The full disk is simulated by making the file store's fsync fail with ENOSPC (tiny model, real app)."""

import errno
import os

import pytest

from chatserver.app import create_app
from chatserver.config import ServerConfig
from engine.config import EngineConfig
from storage import kv_files
from tests.chatserver.conftest import Chat

TOKEN = "operator-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def app_client(aiohttp_client, tiny_model, tmp_path):
    config = ServerConfig(data_dir=tmp_path, admin_token=TOKEN, engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


async def test_a_full_disk_while_spilling_degrades_then_recovers(app_client, tmp_path, monkeypatch):
    chat = Chat(await app_client.ws_connect("/ws"))
    session = await chat.hello()
    sid = session["session_id"]
    first, done = await chat.turn("Tell me about the sea.", max_tokens=8, temperature=0)
    assert done["type"] == "done"
    assert (await (await app_client.get("/readyz")).json())["status"] == "ready"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kv_files.os, "fsync", no_space)
    evicted = await (await app_client.post(f"/api/sessions/{sid}/evict", headers=AUTH)).json()
    assert evicted["kv"]["tier"] == "none"  # not on disk, not in RAM: the next turn recomputes
    assert [p for p in os.listdir(tmp_path / "kv") if not p.endswith(kv_files.SUFFIX)] == []  # no stray temp file
    ready = await app_client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "degraded" and body["checks"]["kv_disk"] is False
    assert "No space left" in body["kv_disk_error"]

    text, done = await chat.turn("And about rivers?", max_tokens=8, temperature=0)
    assert done["type"] == "done" and done["cache"] == "miss" and text  # recomputed, still answered
    stats = await (await app_client.get("/api/stats", headers=AUTH)).json()
    assert stats["kv"]["files"]["num_write_failures"] >= 1

    monkeypatch.undo()  # space is back
    ready = await (await app_client.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["checks"]["kv_disk"] is True
    evicted = await (await app_client.post(f"/api/sessions/{sid}/evict", headers=AUTH)).json()
    assert evicted["kv"]["tier"] == "disk"
    _, done = await chat.turn("Which is longer?", max_tokens=8, temperature=0)
    assert done["cache"] == "disk" and done["usage"]["cached_tokens"] > 0
