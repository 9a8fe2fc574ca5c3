"""The KV directory refusing writes (disk full) while spilling: the session keeps working by
recomputing, the temporary file is removed, /readyz says degraded, and all recovers when space returns.
The full disk is simulated by making the file store's fsync fail with ENOSPC (tiny model, real app)."""

import errno

from storage import kv_files
from tests.helpers.admin import ADMIN_AUTH
from tests.helpers.chat import Chat

AUTH = ADMIN_AUTH


async def test_a_full_disk_while_spilling_degrades_then_recovers(admin, tmp_path, monkeypatch):
    chat = Chat(await admin.ws_connect("/ws"))
    session = await chat.hello()
    sid = session["session_id"]
    first, done = await chat.turn("Tell me about the sea.", max_tokens=8, temperature=0)
    assert done["type"] == "done"
    assert (await (await admin.get("/readyz")).json())["status"] == "ready"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kv_files.os, "fsync", no_space)
    evicted = await (await admin.post(f"/api/sessions/{sid}/evict", headers=AUTH)).json()
    assert evicted["kv"]["tier"] == "none"  # not on disk, not in RAM: the next turn recomputes
    assert [p for p in (tmp_path / "kv").rglob("*") if p.is_file()] == []  # no stray temporary file
    ready = await admin.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "degraded" and body["checks"]["kv_disk"] is False
    assert "No space left" in body["kv_disk_error"]

    text, done = await chat.turn("And about rivers?", max_tokens=8, temperature=0)
    assert done["type"] == "done" and done["cache"] == "miss" and text  # recomputed, still answered
    stats = await (await admin.get("/api/stats", headers=AUTH)).json()
    assert stats["kv"]["files"]["num_write_failures"] >= 1

    monkeypatch.undo()  # space is back
    ready = await (await admin.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["checks"]["kv_disk"] is True
    evicted = await (await admin.post(f"/api/sessions/{sid}/evict", headers=AUTH)).json()
    assert evicted["kv"]["tier"] == "disk"
    _, done = await chat.turn("Which is longer?", max_tokens=8, temperature=0)
    assert done["cache"] == "disk" and done["usage"]["cached_tokens"] > 0
