"""Terminal chat client over the WebSocket protocol (docs/PROTOCOL.md), built on `websockets`.

Type a message and press Enter; /regen asks for another answer to the last question; Ctrl+C while an
answer streams cancels it; Ctrl+C or Ctrl+D at the prompt (or /quit) leaves, printing the command that
resumes the session. A connection that drops while an answer streams is opened again (up to
_RECONNECTS times) with the last frame it read (`last_seq`): the answer goes on where it was.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading

import websockets

_RECONNECTS = 5  # attempts, 0.5 s, 1 s, 2 s... apart


class _Link:
    """The socket of one session, opened again when it drops: remembers the last turn frame read."""

    def __init__(self, url: str, ws):
        self.url, self.ws = url, ws
        self.session_id = self.token = None
        self.last_seq: dict | None = None  # {"turn_id", "seq"} of the last token/done frame read

    async def recv(self) -> dict:
        frame = json.loads(await self.ws.recv())
        if "turn_id" in frame and "seq" in frame:
            self.last_seq = {"turn_id": frame["turn_id"], "seq": frame["seq"]}
        return frame

    async def reopen(self) -> dict:
        """A new socket, resumed where the last one stopped; returns the session frame. Raises the last
        connection error when every attempt fails."""
        for attempt in range(_RECONNECTS):
            await asyncio.sleep(0.5 * 2 ** attempt)
            try:
                self.ws = await websockets.connect(self.url, max_size=None)
                hello = {"type": "hello", "session_id": self.session_id, "resume_token": self.token}
                if self.last_seq:
                    hello["last_seq"] = self.last_seq
                await self.ws.send(json.dumps(hello))
                return json.loads(await self.ws.recv())
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
    try:
        ws = await websockets.connect(args.url, max_size=None)
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        print(f"cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    session_id = token = None
    link = _Link(args.url, ws)
    try:
        hello = {"type": "hello"}
        if args.session:
            hello.update(session_id=args.session, resume_token=args.token)
        await ws.send(json.dumps(hello))
        frame = json.loads(await ws.recv())
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
            await ws.send(json.dumps({"type": "system", "content": args.system}))
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
            await link.ws.send(json.dumps(turn))
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
        elif kind == "error":
            print(f"\n  [error {frame['code']}: {frame['message']}]", flush=True)
            if frame["code"] != "internal_error":
                return
