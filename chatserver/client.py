"""Terminal chat client over the WebSocket protocol (docs/PROTOCOL.md), built on `websockets`.

Type a message and press Enter; Ctrl+C while an answer streams cancels it; Ctrl+C or Ctrl+D at
the prompt (or /quit) leaves, printing the command that resumes the session.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading

import websockets


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
        for m in frame["messages"]:
            print(f"[{m['role']}] {m['content']}")
        if frame.get("turn"):  # a turn of this session runs (or ended while we were away): its frames follow
            print("[assistant] ", end="")
            await _print_answer(ws)
        if args.system and not frame["resumed"]:
            await ws.send(json.dumps({"type": "system", "content": args.system}))
        print(f"session {session_id} ({'resumed' if frame['resumed'] else 'new'}); /quit or Ctrl+D to leave")
        lines = _stdin_lines(loop)
        streaming = asyncio.Event()
        quit_now = asyncio.Event()

        def on_sigint() -> None:
            if streaming.is_set():
                asyncio.ensure_future(ws.send(json.dumps({"type": "cancel"})))
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
            turn = {"type": "user", "content": line}
            if args.max_tokens:
                turn["max_tokens"] = args.max_tokens
            if args.temperature is not None:
                turn["temperature"] = args.temperature
            await ws.send(json.dumps(turn))
            streaming.set()
            try:
                await _print_answer(ws)
            finally:
                streaming.clear()
        return 0
    except websockets.ConnectionClosed as exc:
        print(f"\nconnection closed: {exc}", file=sys.stderr)
        return 1
    finally:
        await ws.close()
        if session_id:
            url = "" if args.url == "ws://127.0.0.1:8080/ws" else f" --url {args.url}"
            # --token=VALUE: a token may begin with '-', which a separate argument would not survive
            print(f"\nresume with: python -m chatserver chat{url} --session {session_id} --token={token}")


async def _print_answer(ws) -> None:
    while True:
        frame = json.loads(await ws.recv())
        kind = frame["type"]
        if kind == "token":
            print(frame["text"], end="", flush=True)
        elif kind == "done":
            u, t = frame["usage"], frame["timings"]
            print(f"\n  [{frame['finish_reason']}; {u['completion_tokens']} tokens, {u['cached_tokens']}/"
                  f"{u['prompt_tokens']} prompt tokens from cache ({frame.get('cache')}), "
                  f"first token {t['ttft_ms']:.0f} ms]", flush=True)
            return
        elif kind == "error":
            print(f"\n  [error {frame['code']}: {frame['message']}]", flush=True)
            if kind == "error" and frame["code"] != "internal_error":
                return
