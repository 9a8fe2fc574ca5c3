"""Soak: many concurrent WebSocket sessions for a while, each sending short turns back to back.

Reports errors (target 0), turns completed, TTFT p50/p99, the server's RSS before and after, and then
checks the database through the admin API: every turn the client saw acknowledged (a `done` frame) must
be in its session's transcript, user message and complete answer, in order.

Run: .venv/bin/python bench/soak.py [--sessions 200] [--seconds 60] [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary, percentile  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

ADMIN = "soak-admin-token"
QUESTIONS = ["Name a color.", "Say hello.", "Name a fruit.", "Count to three.", "Name an animal."]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def session(url: str, n: int, deadline: float, max_tokens: int, out: dict) -> None:
    acknowledged: list[tuple[str, str]] = []
    try:
        async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            sid = json.loads(await ws.recv())["session_id"]
            out["sessions"][sid] = acknowledged
            turn = 0
            while time.monotonic() < deadline:
                question = f"{QUESTIONS[(n + turn) % len(QUESTIONS)]} ({n}.{turn})"
                sent = time.perf_counter()
                await ws.send(json.dumps({"type": "user", "content": question, "max_tokens": max_tokens,
                                          "temperature": 0.7, "seed": n * 1000 + turn}))
                first = None
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "token" and first is None:
                        first = time.perf_counter()
                        out["ttft"].append((first - sent) * 1000)
                    elif frame["type"] == "done":
                        acknowledged.append((question, frame))
                        break
                    elif frame["type"] == "error":
                        out["errors"].append(frame["code"])
                        break
                turn += 1
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        out["errors"].append(type(exc).__name__)


def admin_get(url: str, path: str) -> dict:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def verify(url: str, sessions: dict) -> tuple[int, list[str]]:
    """(acknowledged turns checked, problems): each acknowledged turn's messages are stored, complete."""
    checked, problems = 0, []
    for sid, turns in sessions.items():
        if not turns:
            continue
        stored = admin_get(url, f"/api/sessions/{sid}")["messages"]
        pairs = [(stored[i]["content"], stored[i + 1]) for i in range(len(stored) - 1)
                 if stored[i]["role"] == "user" and stored[i + 1]["role"] == "assistant"]
        by_question = {q: a for q, a in pairs}
        for question, done in turns:
            checked += 1
            answer = by_question.get(question)
            if answer is None:
                problems.append(f"{sid}: {question!r} missing")
            elif answer["finish_reason"] != done["finish_reason"]:
                problems.append(f"{sid}: {question!r} stored as {answer['finish_reason']}")
    return checked, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=8)
    add_model_cache_argument(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), args.model_cache, "--admin-token", ADMIN).start()  # the default limits
        try:
            pid = server.proc.pid
            rss_before = rss_mib(pid)
            out = {"ttft": [], "errors": [], "sessions": {}}
            started = time.monotonic()

            async def run():
                deadline = time.monotonic() + args.seconds
                await asyncio.gather(*[session(server.ws_url, n, deadline, args.max_tokens, out)
                                       for n in range(args.sessions)])

            asyncio.run(run())
            wall = time.monotonic() - started
            rss_after = rss_mib(pid)
            checked, problems = verify(server.url, out["sessions"])
        finally:
            code = server.stop()

    turns = sum(len(t) for t in out["sessions"].values())
    print(f"\nmachine: {cpu_summary()}")
    print(f"{args.sessions} sessions, {args.seconds:.0f} s of turns (max_tokens {args.max_tokens}), wall {wall:.1f} s\n")
    print("| errors | turns completed | turns/s | TTFT p50 ms | TTFT p99 ms | RSS before MiB | RSS after MiB | "
          "acknowledged turns in the database | server exit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(out['errors'])} | {turns} | {turns / wall:.1f} | {percentile(out['ttft'], 50):.0f} | "
          f"{percentile(out['ttft'], 99):.0f} | {rss_before:.0f} | {rss_after:.0f} | "
          f"{checked - len(problems)}/{checked} | {code} |")
    for problem in (out["errors"] + problems)[:20]:
        print("  ", problem)


if __name__ == "__main__":
    main()
