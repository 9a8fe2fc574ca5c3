"""Session-admin REST API, metrics and health (tiny model, through the app)."""

import json
import re

import pytest

from tests.helpers.admin import ADMIN_AUTH, ADMIN_TOKEN
from tests.helpers.chat import Chat
from tests.helpers.polling import wait_until

TOKEN, AUTH = ADMIN_TOKEN, ADMIN_AUTH


async def _session(client, text="hello there", **kw):
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello(**kw)
    _, done = await chat.turn(text, max_tokens=6, temperature=0)
    return chat, session, done


async def test_admin_api_is_disabled_without_a_token(client):
    resp = await client.get("/api/sessions")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "admin_disabled"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": "Basic b3BlcmF0b3Itc2VjcmV0"}])
async def test_missing_or_wrong_token_is_401(admin, headers):
    for method, path in [("GET", "/api/sessions"), ("GET", "/api/stats"), ("GET", "/api/sessions/x"),
                         ("DELETE", "/api/sessions/x"), ("POST", "/api/sessions/x/evict")]:
        resp = await admin.request(method, path, headers=headers)
        assert resp.status == 401, (method, path)
        assert (await resp.json())["error"]["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_pagination_newest_first_without_gaps_or_repeats(admin):
    ids = []
    for i in range(5):
        chat, session, _ = await _session(admin, f"message {i}")
        ids.append(session["session_id"])
        await chat.ws.close()
    seen, cursor = [], None
    while True:
        resp = await admin.get("/api/sessions", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=AUTH)
        assert resp.status == 200
        page = await resp.json()
        assert len(page["sessions"]) <= 2
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    first = (await (await admin.get("/api/sessions", params={"limit": 1}, headers=AUTH)).json())["sessions"][0]
    assert first["title"] == "message 4" and first["num_messages"] == 2 and first["num_tokens"] > 0
    assert first["kv"]["tier"] == "ram" and first["kv"]["bytes"] > 0


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "tier=gpu", "cursor=%%%"])
async def test_bad_list_parameters_are_400(admin, query):
    resp = await admin.get(f"/api/sessions?{query}", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_request"


async def test_session_detail_has_the_transcript(admin):
    _, session, _ = await _session(admin, "what is up")
    resp = await admin.get(f"/api/sessions/{session['session_id']}", headers=AUTH)
    detail = await resp.json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][0]["content"] == "what is up" and detail["connections"] == 1
    assert (await admin.get("/api/sessions/nope", headers=AUTH)).status == 404


async def test_session_detail_shows_the_active_path_or_every_branch(admin):
    chat, session, first = await _session(admin, "what is up")
    await chat.send(type="regenerate", max_tokens=6, temperature=1.0, seed=3)
    while (frame := await chat.recv())["type"] != "done":
        pass
    url = f"/api/sessions/{session['session_id']}"
    active = await (await admin.get(url, headers=AUTH)).json()
    assert [m["id"] for m in active["messages"]] == [first["user_message_id"], frame["message_id"]]
    assert active["active_leaf_id"] == frame["message_id"]
    tree = await (await admin.get(url, params={"tree": "true"}, headers=AUTH)).json()
    assert [(m["id"], m["parent_id"]) for m in tree["messages"]] == [
        (first["user_message_id"], None), (first["message_id"], first["user_message_id"]),
        (frame["message_id"], first["user_message_id"])]
    bad = await admin.get(url, params={"tree": "maybe"}, headers=AUTH)
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_request"


async def test_evict_then_resume_reports_disk_and_drop_then_resume_recomputes_its_own_part(admin):
    chat, session, first = await _session(admin, "same opening")
    twin, twin_session, _ = await _session(admin, "same opening")
    sid = session["session_id"]
    resp = await admin.post(f"/api/sessions/{sid}/evict", headers=AUTH)
    assert (await resp.json())["kv"]["tier"] == "disk"
    listed = await (await admin.get("/api/sessions", params={"tier": "disk"}, headers=AUTH)).json()
    assert [s["id"] for s in listed["sessions"]] == [sid]
    text_disk, done = await chat.turn("next", max_tokens=6, temperature=0)
    assert done["cache"] == "disk" and done["usage"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1

    resp = await admin.post(f"/api/sessions/{sid}/evict?drop=true", headers=AUTH)
    assert (await resp.json()) == {"id": sid, "action": "dropped", "kv": {"tier": "none", "bytes": 0}}
    text_miss, done = await chat.turn("and more", max_tokens=6, temperature=0)
    # its own KV is gone: only the beginning it has in common with the twin (its first turn) is reused,
    # shared from the twin's KV; the rest of its history is recomputed
    twin_tokens = first["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
    assert done["cache"] != "disk" and 0 < done["usage"]["cached_tokens"] <= twin_tokens
    # the twin session, same conversation, its KV never dropped: same answers
    assert (await twin.turn("next", max_tokens=6, temperature=0))[0] == text_disk
    assert (await twin.turn("and more", max_tokens=6, temperature=0))[0] == text_miss


async def test_delete_removes_transcript_and_kv_and_disconnects_the_client(admin, tmp_path):
    chat, session, _ = await _session(admin)
    sid = session["session_id"]
    await admin.post(f"/api/sessions/{sid}/evict", headers=AUTH)
    assert list((tmp_path / "kv").rglob("*.safetensors"))
    resp = await admin.delete(f"/api/sessions/{sid}", headers=AUTH)
    assert resp.status == 204
    frame = await chat.recv()
    assert frame["type"] == "error" and frame["code"] == "session_deleted"
    closing = await chat.ws.receive(timeout=5)
    assert closing.type.name == "CLOSE" and closing.data == 4004
    await wait_until(lambda: not [p for p in (tmp_path / "kv").rglob("*") if p.is_file()], what="the KV files deleted")
    assert (await admin.get(f"/api/sessions/{sid}", headers=AUTH)).status == 404
    other = Chat(await admin.ws_connect("/ws"))
    assert (await other.hello(session_id=sid, resume_token=session["resume_token"]))["code"] == "session_not_found"
    assert (await admin.delete(f"/api/sessions/{sid}", headers=AUTH)).status == 404


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_metrics_move_as_turns_happen(admin):
    before = await (await admin.get("/metrics")).text()
    chat, _, done = await _session(admin)
    after = await (await admin.get("/metrics")).text()
    outcome = done["finish_reason"]
    assert _metric(after, f'chatserver_turns_total{{outcome="{outcome}"}}') == _metric(before, f'chatserver_turns_total{{outcome="{outcome}"}}') + 1
    assert _metric(after, 'chatserver_tokens_total{kind="generated"}') >= done["usage"]["completion_tokens"]
    assert _metric(after, "chatserver_ttft_seconds_count") == _metric(before, "chatserver_ttft_seconds_count") + 1
    assert _metric(after, "chatserver_websocket_connections") == 1
    assert _metric(after, 'chatserver_kv_sessions{tier="ram"}') == 1
    assert _metric(after, 'chatserver_kv_lookups_total{result="miss"}') == 1
    assert "session" not in re.sub(r"chatserver_kv_sessions", "", after)  # no per-session labels


async def test_stats_health_and_readiness(admin):
    await _session(admin)
    text = await (await admin.get("/api/stats", headers=AUTH)).text()

    def reject(constant):
        raise AssertionError(f"{constant} is not JSON")

    stats = json.loads(text, parse_constant=reject)  # strict JSON: no Infinity/NaN
    assert stats["kv"]["ram"]["sessions"] == 1 and stats["engine"]["ttft_ms"]["count"] == 1
    assert stats["server"]["websockets"] == 1
    assert stats["engine"]["weights"]["formats"] == {"float32": 2 * 4 + 1}  # the tiny random model: off any grid
    assert stats["engine"]["weights"]["bytes"] > 0
    assert (await admin.get("/healthz")).status == 200
    ready = await admin.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "ready"
    assert body["checks"] == {"model": True, "database": True, "engine": True, "kv_disk": True}


async def test_openapi_document_is_served(admin):
    doc = await (await admin.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/api/sessions", "/api/sessions/{session_id}", "/api/sessions/{session_id}/evict", "/api/stats"}
