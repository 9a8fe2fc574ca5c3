"""Dropped sockets: an answer survives the loss of its connection, with nothing lost and nothing repeated.

For --answers questions (greedy, temperature 0, --max-tokens each) it first reads every answer
uninterrupted, on its own session. Then it asks each question again on a new session, drops the socket
(no close handshake, as when a phone loses its network) after a random number (at least one) of token
frames, waits a random 0 to --max-away seconds, reconnects with `last_seq` (the turn_id and seq of the
last frame read) and reads the rest (docs/PROTOCOL.md, "Resuming a turn"). Reported: token frames lost
(a seq never received) and duplicated (a seq received twice), answers that differ from the
uninterrupted one, and how many resumes found the turn still running. The target is 0 / 0 / 0.

Run from the repository root (about 5 minutes on 2 CPU cores):

    .venv/bin/python bench/dropped_sockets.py [--answers 100] [--max-tokens 48] [--concurrency 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

SUBJECTS = ["the moon", "a bicycle", "coffee", "the ocean", "a volcano", "bread", "a library", "rain", "chess",
            "the internet", "bees", "a lighthouse", "glass", "a violin", "snow", "trains", "maps", "soap",
            "a compass", "clouds"]
ASKS = ["Explain how {} works.", "Tell me three facts about {}.", "Write a short poem about {}.",
        "Describe {} to a child.", "What is the history of {}?"]


@dataclass
class Outcome:
    dropped_after: int  # token frames read before the drop
    running_at_resume: bool
    lost: int  # token frames never received
    duplicated: int  # token frames received more than once
    same_answer: bool


async def _ask(ws, question: str, max_tokens: int) -> None:
    await ws.send(json.dumps({"type": "user", "content": question, "max_tokens": max_tokens, "temperature": 0}))


async def _hello(url: str, **hello):
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps({"type": "hello", **hello}))
    return ws, json.loads(await ws.recv())


async def _frames_until_done(ws) -> list[dict]:
    frames = []
    while True:
        frames.append(json.loads(await ws.recv()))
        if frames[-1]["type"] in ("done", "error"):
            return frames


async def uninterrupted(url: str, question: str, max_tokens: int) -> str:
    ws, _ = await _hello(url)
    await _ask(ws, question, max_tokens)
    frames = await _frames_until_done(ws)
    await ws.close()
    assert frames[-1]["type"] == "done", frames[-1]
    return "".join(f["text"] for f in frames if f["type"] == "token")


async def dropped(url: str, question: str, max_tokens: int, want: str, rng: random.Random,
                  max_away: float) -> Outcome:
    ws, session = await _hello(url)
    await _ask(ws, question, max_tokens)
    num_tokens = max(2, len(want) // 3)  # about the answer's token frames: drop anywhere in it
    drop_after = rng.randrange(1, num_tokens)  # (a drop before the first frame could lose the user frame)
    held = []
    while len(held) < drop_after:
        frame = json.loads(await ws.recv())
        held.append(frame)
        if frame["type"] != "token":
            break
    ws.transport.abort()  # no close handshake
    await asyncio.sleep(rng.uniform(0, max_away))
    hello = {"session_id": session["session_id"], "resume_token": session["resume_token"]}
    tokens = [f for f in held if f["type"] == "token"]
    if tokens:
        hello["last_seq"] = {"turn_id": tokens[-1]["turn_id"], "seq": tokens[-1]["seq"]}
    ws, resumed = await _hello(url, **hello)
    assert resumed["type"] == "session", resumed
    if held and held[-1]["type"] != "token":  # the turn ended before the drop: all of it was read
        rest, running = [], False
    elif resumed["turn"] is None:  # it ended while away and this client held its done: impossible here
        raise AssertionError(f"no turn to resume: {resumed}")
    else:
        running = resumed["turn"]["running"]
        rest = await _frames_until_done(ws)
    await ws.close()
    frames = held + rest
    seqs = [f["seq"] for f in frames if f["type"] == "token"]
    done = frames[-1]
    assert done["type"] == "done", done
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    return Outcome(len(tokens), running, lost=done["seq"] - len(set(seqs)), duplicated=len(seqs) - len(set(seqs)),
                   same_answer=text == want)


async def run(args: argparse.Namespace, url: str) -> list[Outcome]:
    rng = random.Random(args.seed)
    questions = [ask.format(subject) for ask in ASKS for subject in SUBJECTS][:args.answers]
    limit = asyncio.Semaphore(args.concurrency)

    async def bounded(coro):
        async with limit:
            return await coro

    wants = await asyncio.gather(*(bounded(uninterrupted(url, q, args.max_tokens)) for q in questions))
    rngs = [random.Random(rng.random()) for _ in questions]
    return await asyncio.gather(*(bounded(dropped(url, q, args.max_tokens, w, r, args.max_away))
                                  for q, w, r in zip(questions, wants, rngs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-away", type=float, default=1.0, help="longest wait before reconnecting, seconds")
    parser.add_argument("--seed", type=int, default=0)
    add_model_cache_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), args.model_cache, "--turns-per-minute", "0").start()
        try:
            outcomes = asyncio.run(run(args, server.ws_url))
        finally:
            server.stop()
    n = len(outcomes)
    print(f"machine: {cpu_summary()}")
    print(f"{n} greedy answers of at most {args.max_tokens} tokens, each dropped once and resumed with last_seq")
    print("| answers | resumed while running | resumed after the end | token frames lost | duplicated | "
          "answers differing from the uninterrupted one |")
    print("|---|---|---|---|---|---|")
    running = sum(o.running_at_resume for o in outcomes)
    print(f"| {n} | {running} | {n - running} | {sum(o.lost for o in outcomes)} | "
          f"{sum(o.duplicated for o in outcomes)} | {sum(not o.same_answer for o in outcomes)} |")
    bad = [o for o in outcomes if o.lost or o.duplicated or not o.same_answer]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
