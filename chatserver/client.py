"""Terminal chat client over the WebSocket protocol (docs/PROTOCOL.md), built on `websockets`.

Type a message and press Enter; /regen asks for another answer to the last question; Ctrl+C while an
answer streams cancels it; Ctrl+C or Ctrl+D at the prompt (or /quit) leaves, printing the command that
resumes the session. A connection that drops while an answer streams is opened again (up to
_RECONNECTS times) with the last frame it read (`last_seq`): the answer goes on where it was.

In a cluster (docs/SCALING.md) the socket of a known session is opened at /ws?session=ID, where the
balancer reads the id; a session another replica serves (`session_elsewhere`) is asked for again after
its `retry_after`, and a session that moved (`session_moved`, close 4009) is reopened through the balancer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets

_RECONNECTS = 5  # attempts, 0.5 s, 1 s, 2 s... apart
_ELSEWHERE_WAITS = 10  # session_elsewhere answers waited out (each its retry_after, at most _MAX_WAIT_S)
_MAX_WAIT_S = 30.0


def session_url(url: str, session_id: str | None) -> str:
    """`url` with its `session` query parameter set to `session_id` (unchanged when None)."""
    if session_id is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "session"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("session", session_id)])))


class _Link:
    """The socket of one session, opened again when it drops: remembers the last turn frame read."""

    def __init__(self, url: str):
        self.url = url
        self.ws = None
        self.session_id = self.token = None
        self.last_seq: dict | None = None  # {"turn_id", "seq"} of the last token/done frame read

    async def recv(self) -> dict:
        frame = json.loads(await self.ws.recv())
        if "turn_id" in frame and "seq" in frame:
            self.last_seq = {"turn_id": frame["turn_id"], "seq": frame["seq"]}
        return frame

    async def send(self, frame: dict) -> None:
        """Send on the socket; one the server closed meanwhile (the session moved) is reopened first."""
        try:
            await self.ws.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            session = await self.reopen()
            if session["type"] == "error":
                raise
            await self.ws.send(json.dumps(frame))

    async def open(self) -> dict:
        """A socket saying hello to the session (a new one while session_id is None); returns the answer
        to the hello. A session another replica serves is asked for again after the retry_after it is
        given (up to _ELSEWHERE_WAITS times), the last refusal returned."""
        for _ in range(_ELSEWHERE_WAITS):
            self.ws = await websockets.connect(session_url(self.url, self.session_id), max_size=None)
            hello = {"type": "hello"}
            if self.session_id is not None:
                hello.update(session_id=self.session_id, resume_token=self.token)
                if self.last_seq:
                    hello["last_seq"] = self.last_seq
            await self.ws.send(json.dumps(hello))
            frame = json.loads(await self.ws.recv())
            if frame["type"] != "error" or frame["code"] != "session_elsewhere":
                return frame
            wait = min(_MAX_WAIT_S, float(frame.get("retry_after") or 1.0))
            print(f"  [replica {frame.get('replica')} serves this session; asking again in {wait:.0f} s]",
                  file=sys.stderr, flush=True)
            await self.ws.close()
            await asyncio.sleep(wait)
        return frame

    async def reopen(self) -> dict:
        """A new socket, resumed where the last one stopped; returns the session frame. Raises the last
        connection error when every attempt fails."""
        for attempt in range(_RECONNECTS):
            await asyncio.sleep(0.5 * 2 ** attempt)
            try:
                return await self.open()
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake):
                if attempt == _RECONNECTS - 1:
                    raise
        raise AssertionError("unreachable")


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """Lines from stdin, read by a daemon thread (a blocked read never delays exit). None = EOF."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return lines


async def run_chat(args) -> int:
    loop = asyncio.get_running_loop()
    session_id = token = None
    link = _Link(args.url)
    if args.session:
        link.session_id, link.token = args.session, args.token
    try:
        frame = await link.open()
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
        print(f"cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        if frame["type"] == "error":
            print(f"error: {frame['code']}: {frame['message']}", file=sys.stderr)
            return 1
        session_id, token = frame["session_id"], frame["resume_token"]
        link.session_id, link.token = session_id, token
        for m in frame["messages"]:
            print(f"[{m['role']}] {m['content']}")
        if frame.get("turn"):  # a turn of this session runs (or ended while we were away): its frames follow
            print("[assistant] ", end="")
            await _print_answer(link)
        if args.system and not frame["resumed"]:
            await link.send({"type": "system", "content": args.system})
        print(f"session {session_id} ({'resumed' if frame['resumed'] else 'new'}); /quit or Ctrl+D to leave")
        lines = _stdin_lines(loop)
        streaming = asyncio.Event()
        quit_now = asyncio.Event()

        def on_sigint() -> None:
            if streaming.is_set():
                asyncio.ensure_future(link.ws.send(json.dumps({"type": "cancel"})))
            else:
                quit_now.set()
                lines.put_nowait(None)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        while not quit_now.is_set():
            print("> ", end="", flush=True)
            line = await lines.get()
            if line is None or line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            turn = {"type": "regenerate"} if line.strip() == "/regen" else {"type": "user", "content": line}
            if args.max_tokens:
                turn["max_tokens"] = args.max_tokens
            if args.temperature is not None:
                turn["temperature"] = args.temperature
            await link.send(turn)
            streaming.set()
            try:
                await _print_answer(link)
            finally:
                streaming.clear()
        return 0
    except websockets.ConnectionClosed as exc:
        print(f"\nconnection closed: {exc}", file=sys.stderr)
        return 1
    finally:
        await link.ws.close()
        if session_id:
            url = "" if args.url == "ws://127.0.0.1:8080/ws" else f" --url {args.url}"
            # --token=VALUE: a token may begin with '-', which a separate argument would not survive
            print(f"\nresume with: python -m chatserver chat{url} --session {session_id} --token={token}")


async def _print_answer(link: _Link) -> None:
    """Print a turn's frames up to its done (or an error), through dropped connections."""
    printed = ""
    while True:
        try:
            frame = await link.recv()
        except websockets.ConnectionClosed:
            print("\n  [connection lost; reconnecting]", flush=True)
            session = await link.reopen()
            if session["type"] == "error":
                print(f"  [error {session['code']}: {session['message']}]", flush=True)
                return
            if session.get("turn") is None:  # the turn ended while we were away: its answer is stored
                answers = [m for m in session["messages"] if m["role"] == "assistant"]
                rest = answers[-1]["content"][len(printed):] if answers else ""
                print(f"{rest}\n  [the answer ended while the connection was down]", flush=True)
                return
            continue
        kind = frame["type"]
        if kind == "token":
            printed += frame["text"]
            print(frame["text"], end="", flush=True)
        elif kind == "done":
            u, t = frame["usage"], frame["timings"]
            print(f"\n  [{frame['finish_reason']}; {u['completion_tokens']} tokens, {u['cached_tokens']}/"
                  f"{u['prompt_tokens']} prompt tokens from cache ({frame.get('cache')}), "
                  f"first token {t['ttft_ms']:.0f} ms]", flush=True)
            return
        elif kind == "error" and frame["code"] == "session_moved":
            continue  # the server closes the socket next (4009): reopened above, through the balancer
        elif kind == "error":
            print(f"\n  [error {frame['code']}: {frame['message']}]", flush=True)
            if frame["code"] != "internal_error":
                return
