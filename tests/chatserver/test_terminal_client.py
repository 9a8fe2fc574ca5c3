"""The terminal client (`python -m chatserver chat`) against the in-process app: an answer whose
connection drops goes on where it was (the client reopens it with `last_seq`), and /regen asks for
another answer. The drop is made by a TCP relay between the client and the server."""

from __future__ import annotations

import asyncio
import sys
import threading

from chatserver import keys

from tests.helpers.paths import REPO

QUESTION = "Tell me a long story about the sea"
MAX_TOKENS = 40


async def _relay(target_port: int, drop_after: int, on_cut=lambda: None) -> tuple[asyncio.AbstractServer, int]:
    """A relay to the server; its first connection is cut (no close handshake) after `drop_after` reads
    from the server (each about one WebSocket frame: the frames are compressed, so bytes say little).
    Returns (server, port)."""
    first = [True]

    async def serve(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        cut, first[0] = first[0], False

        async def pipe(src, dst, limit):
            reads = 0
            try:
                while data := await src.read(65536):
                    reads += 1
                    if limit and reads > limit:
                        on_cut()
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, drop_after if cut else 0))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _run_client(port: int, lines: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatserver", "chat", "--url", f"ws://127.0.0.1:{port}/ws", "--temperature", "0",
        "--max-tokens", str(MAX_TOKENS), cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(lines.encode()), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _answers(out: str) -> list[str]:
    """The answers printed, each without the reconnect notice, in order."""
    out = out.replace("\n  [connection lost; reconnecting]\n", "")
    return [chunk.split("\n  [", 1)[0] for chunk in out.split("> ")[1:] if "\n  [" in chunk]


async def test_an_answer_whose_connection_drops_goes_on_where_it_was(client, connect):
    chat, _ = await connect()
    want, _ = await chat.turn(QUESTION, max_tokens=MAX_TOKENS, temperature=0)  # uninterrupted, own session
    hold = threading.Event()
    engine = client.app[keys.engine].engine

    def cut() -> None:  # the engine pauses with the answer half written, until the client is back
        engine.query(lambda e: hold.wait(30))
        asyncio.get_running_loop().call_later(2.0, hold.set)

    relay, port = await _relay(client.server.port, drop_after=6, on_cut=cut)  # the handshake, a few tokens
    try:
        out = await _run_client(port, QUESTION + "\n")
    finally:
        hold.set()
        relay.close()
    assert "[connection lost; reconnecting]" in out, out
    assert _answers(out) == [want]


async def test_regen_asks_for_another_answer_to_the_last_question(client):
    out = await _run_client(client.server.port, "Name a colour\n/regen\n")
    first, again = _answers(out)
    assert first == again  # greedy: the same question gets the same answer, now a second version of it
    assert out.count("prompt tokens from cache") == 2
