"""Replicas on one database (--replica-name): one serves a session at a time, the session frame and the
answers name it, a session opened on a second replica is refused while the first serves it and taken once
it is let go, and a replica whose lease was taken closes the session on its connections."""

from chatserver.app import create_app
from chatserver.config import ChatConfig, ServerConfig
from engine import EngineConfig
from storage import StorageConfig
from tests.helpers.chat import Chat
from tests.helpers.database import sql
from tests.helpers.polling import wait_until


async def _replica(aiohttp_client, tiny_model, tmp_path, name: str, database_url: str, lease_seconds: float = 15.0):
    config = ServerConfig(data_dir=tmp_path / name, storage=StorageConfig(database_url=database_url),
                          chat=ChatConfig(replica_name=name, lease_seconds=lease_seconds),
                          engine=EngineConfig(max_context=1024, max_new_tokens=64))
    return await aiohttp_client(create_app(config, model=tiny_model))


async def _open(client, **hello) -> tuple[Chat, dict]:
    chat = Chat(await client.ws_connect("/ws"))
    return chat, await chat.hello(**hello)


async def test_one_replica_serves_a_session_at_a_time(aiohttp_client, tiny_model, tmp_path, database_url):
    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url)
    r2 = await _replica(aiohttp_client, tiny_model, tmp_path, "r2", database_url)
    chat, session = await _open(r1)
    assert session["replica"] == "r1"
    _, done = await chat.turn("Hello", max_tokens=4, temperature=0)
    assert done["replica"] == "r1"
    creds = {"session_id": session["session_id"], "resume_token": session["resume_token"]}

    other, refused = await _open(r2, **creds)  # a direct connection to another replica, or a race
    assert refused["type"] == "error" and refused["code"] == "session_elsewhere" and refused["replica"] == "r1"
    assert refused["retry_after"] >= 1
    assert (await chat.turn("Still here?", max_tokens=4, temperature=0))[1]["type"] == "done"  # r1 serves on

    await chat.ws.close()  # the session is idle on r1: let go
    await wait_until(lambda: sql(database_url, "select owner from session_leases") == [(None,)],
                     what="r1 released the session")
    moved = await other.hello(**creds)
    assert moved["type"] == "session" and moved["replica"] == "r2" and len(moved["messages"]) == 4
    _, done = await other.turn("And now?", max_tokens=4, temperature=0)
    assert done["type"] == "done" and done["replica"] == "r2"
    assert sql(database_url, "select owner, epoch from session_leases") == [("r2", 2)]


async def test_a_replica_whose_lease_was_taken_closes_the_session_there(aiohttp_client, tiny_model, tmp_path,
                                                                         database_url):
    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url, lease_seconds=0.6)
    chat, session = await _open(r1)
    await chat.turn("Hello", max_tokens=4, temperature=0)
    # another replica took the session (r1 was paused past its lease): the lease row says so
    sql(database_url, "update session_leases set owner = 'r2', epoch = epoch + 1")
    frame = await chat.recv()
    assert frame["type"] == "error" and frame["code"] == "session_moved"
    closing = await chat.ws.receive(timeout=5)
    assert closing.type.name == "CLOSE" and closing.data == 4009


async def test_a_single_server_takes_no_lease(client, database_url):
    chat = Chat(await client.ws_connect("/ws"))
    session = await chat.hello()
    await chat.turn("Hello", max_tokens=4, temperature=0)
    assert "replica" not in session and sql(database_url, "select count(*) from session_leases") == [(0,)]


async def test_a_paused_replica_cannot_commit_after_another_took_the_session(aiohttp_client, tiny_model, tmp_path,
                                                                             database_url):
    """Split brain, in one process: r1 is paused mid-answer (its engine held) while another replica takes the
    session; when r1 goes on, its answer's commit is refused by the fence: the transcript has no answer from it."""
    import asyncio
    import threading

    from chatserver import keys

    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url, lease_seconds=30)
    chat, session = await _open(r1)
    await chat.turn("Hello", max_tokens=4, temperature=0)
    hold = threading.Event()
    r1.app[keys.engine].engine.query(lambda engine: hold.wait(30))  # r1 pauses between two steps
    await chat.send(type="user", content="Tell me a long story", max_tokens=32, temperature=0)
    await asyncio.sleep(0.2)
    sql(database_url, "update session_leases set owner = 'r2', epoch = epoch + 1")  # r2 took it meanwhile
    hold.set()
    while (frame := await chat.recv())["type"] not in ("done", "error"):
        pass
    assert frame["message_id"] is None  # not stored
    rows = sql(database_url, "select role, content from messages order by seq")
    assert [r for r, _ in rows] == ["user", "assistant", "user"]  # the first turn, and the question alone


async def test_a_session_taken_from_a_dead_replica_ends_its_answer_as_interrupted(aiohttp_client, tiny_model,
                                                                                  tmp_path, database_url):
    """r1 dies mid-answer (its engine held, its lease run out): r2 takes the session, stores the answer as
    checkpointed, finish_reason interrupted, and serves on; r1 coming back commits nothing."""
    import asyncio
    import threading

    from chatserver import keys

    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url, lease_seconds=30)
    r2 = await _replica(aiohttp_client, tiny_model, tmp_path, "r2", database_url)
    chat, session = await _open(r1)
    await chat.turn("Hello", max_tokens=4, temperature=0)
    hold = threading.Event()
    r1.app[keys.engine].engine.query(lambda engine: hold.wait(30))
    await chat.send(type="user", content="Tell me a long story", max_tokens=32, temperature=0)
    await asyncio.sleep(0.2)
    [(question,)] = sql(database_url, "select id from messages where content = 'Tell me a long story'")
    await r1.app[keys.transcripts].save_draft(session["session_id"], question, "Once upon")  # r1's checkpoint
    sql(database_url, "update session_leases set expires_at = '2000-01-01 00:00:00'")  # r1 fell silent

    moved, resumed = await _open(r2, session_id=session["session_id"], resume_token=session["resume_token"])
    assert resumed["replica"] == "r2"
    last = resumed["messages"][-1]
    assert (last["role"], last["content"], last["finish_reason"]) == ("assistant", "Once upon", "interrupted")
    hold.set()  # r1 goes on: its answer's commit is refused
    while (frame := await chat.recv())["type"] not in ("done", "error"):
        pass
    assert frame["message_id"] is None
    _, done = await moved.turn("Go on", max_tokens=4, temperature=0)
    assert done["type"] == "done" and done["replica"] == "r2"
    roles = [r for r, in sql(database_url, "select role from messages order by seq")]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]


async def test_a_turn_cancelled_because_its_lease_was_lost_stores_nothing(aiohttp_client, tiny_model, tmp_path,
                                                                          database_url):
    """r1's renewal finds its lease taken while an answer is running: the turn is cancelled, and its
    cancelled answer is not stored either (it would make a branch beside the new owner's turns)."""
    import asyncio
    import threading

    from chatserver import keys

    r1 = await _replica(aiohttp_client, tiny_model, tmp_path, "r1", database_url, lease_seconds=0.6)
    chat, session = await _open(r1)
    await chat.turn("Hello", max_tokens=4, temperature=0)
    hold = threading.Event()
    r1.app[keys.engine].engine.query(lambda engine: hold.wait(30))
    await chat.send(type="user", content="Tell me a long story", max_tokens=32, temperature=0)
    await asyncio.sleep(0.1)
    sql(database_url, "update session_leases set owner = 'r2', epoch = epoch + 1")
    frame = await chat.recv()  # the renewal finds the lease gone: session_moved, the turn cancelled
    assert frame["type"] == "error" and frame["code"] == "session_moved"
    hold.set()
    await wait_until(lambda: not r1.app[keys.sessions].num_live, what="r1 let the session go")
    await asyncio.sleep(0.3)
    roles = [r for r, in sql(database_url, "select role from messages order by seq")]
    assert roles == ["user", "assistant", "user"]
