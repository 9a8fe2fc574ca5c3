"""scripts/cluster.sh as a user runs it: `up 2` starts PostgreSQL, Redis, two replicas (the default model)
and HAProxy; a session id in the WebSocket URL's query or in X-Session-Id always reaches the same replica;
a replica killed with -9 leaves its sessions to the other one, which resumes them through HAProxy warm
from the shared tier; `down` leaves no process. Needs the Debian packages postgresql, redis-server and
haproxy (scripts/setup.sh --test installs them): without them the test fails, it does not skip. (Here, not
in tests/chatserver/cluster: the cluster has its own PostgreSQL, so the suite's PostgreSQL pass,
scripts/test_postgres.sh, need not run it again.)"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from pathlib import Path

import pytest
import websockets

from tests.helpers.cluster import cluster_sh, routed_to
from tests.helpers.admin import ADMIN_AUTH
from tests.helpers.polling import wait_until

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

HISTORY = "Notes from the harbour meeting: the ship carried grain, and the crates went to the old mill. " * 8


def _replica_stats(cluster_dir: Path, name: str) -> dict:
    port = (cluster_dir / name / "port").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/stats", headers=ADMIN_AUTH)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


async def _open(url: str, session: str | None, **hello) -> tuple[websockets.ClientConnection, dict]:
    ws_url = url.replace("http://", "ws://") + "/ws" + (f"?session={session}" if session else "")
    ws = await websockets.connect(ws_url, max_size=None)
    await ws.send(json.dumps({"type": "hello", **hello}))
    return ws, json.loads(await ws.recv())


async def _turn(ws, content: str) -> tuple[str, dict]:
    await ws.send(json.dumps({"type": "user", "content": content, "max_tokens": 12, "temperature": 0}))
    text = ""
    while (frame := json.loads(await ws.recv()))["type"] == "token":
        text += frame["text"]
    assert frame["type"] == "done", frame
    return text, frame


async def test_a_session_id_reaches_one_replica_by_query_or_header(cluster):
    url = cluster.url
    routes = {sid: routed_to(url, sid) for sid in (secrets.token_hex(16) for _ in range(24))}
    assert set(routes.values()) == {"r1", "r2"}  # hashed over both
    for sid, replica in list(routes.items())[:6]:
        assert {routed_to(url, sid) for _ in range(3)} == {replica}

    ws, session = await _open(url, None)  # no session id: the least loaded replica
    assert session["type"] == "session"
    await _turn(ws, "Hello there")
    await ws.close()
    sid, creds = session["session_id"], {"session_id": session["session_id"], "resume_token": session["resume_token"]}
    # its last connection closed: its replica let it go, and the hash decides from now on
    a, first = await _open(url, sid, **creds)
    b, second = await _open(url, sid, **creds)
    try:
        assert first["type"] == second["type"] == "session"
        assert first["replica"] == second["replica"] == routed_to(url, sid)
    finally:
        await a.close()
        await b.close()


async def _session_on(url: str, replica: str) -> tuple[websockets.ClientConnection, dict]:
    """A new session created on `replica` whose id HAProxy also hashes to it (its connection open)."""
    probe = next(sid for sid in (secrets.token_hex(16) for _ in range(200)) if routed_to(url, sid) == replica)
    for _ in range(30):
        ws, session = await _open(url, probe)  # the query routes; the server ignores it
        assert session["replica"] == replica
        if routed_to(url, session["session_id"]) == replica:
            return ws, session
        await ws.close()  # never stored: nothing is left of it
    raise AssertionError(f"no session id hashed to {replica} in 30 tries")


async def test_a_killed_replicas_session_goes_on_warm_on_the_other_and_down_stops_all(cluster):
    url, cluster_dir, env = cluster.url, cluster.dir, cluster.env
    ws, session = await _session_on(url, "r1")
    creds = {"session_id": session["session_id"], "resume_token": session["resume_token"]}
    first, _ = await _turn(ws, HISTORY + "Where did the crates go?")
    second, done = await _turn(ws, "And the grain?")
    assert done["replica"] == "r1"
    history_tokens = done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"]
    # the KV of both turns is in Redis (written behind each turn) before the crash
    await wait_until(lambda: _replica_stats(cluster_dir, "r1")["kv"]["shared_tier"]["num_written"] >= 2,
                     timeout=30, what="r1 wrote the session's KV to the shared tier")

    killed = cluster_sh(env, "kill", "r1", timeout=30)
    assert killed.returncode == 0, killed.stderr
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)

    moved, resumed = await _open(url, session["session_id"], **creds)  # through HAProxy, to r2
    try:
        assert resumed["type"] == "session" and resumed["replica"] == "r2", resumed
        assert [(m["role"], m["content"]) for m in resumed["messages"]] == [
            ("user", HISTORY + "Where did the crates go?"), ("assistant", first),
            ("user", "And the grain?"), ("assistant", second)]
        _, done = await _turn(moved, "Who carried it?")
        assert done["replica"] == "r2" and done["cache"] == "shared"
        assert done["usage"]["cached_tokens"] >= history_tokens - 2  # the past is not recomputed
    finally:
        await moved.close()

    status = cluster_sh(env, "status", timeout=30).stdout
    assert "r1        stopped" in status and "r2        running" in status
    pids = [int((cluster_dir / name).read_text()) for name in ("r2/pid", "haproxy.pid", "redis/redis.pid")]
    pids.append(int((cluster_dir / "postgres/data/postmaster.pid").read_text().split()[0]))
    down = cluster_sh(env, "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if _is_running(pid)] == []


def _is_running(pid: int) -> bool:
    """A live process (a zombie waiting for its parent to reap it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
