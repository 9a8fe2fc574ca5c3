"""Load benchmark: N concurrent WebSocket sessions, each playing a multi-turn conversation.

Measures, client-side on loopback, for N = 1, 4, 16, 32 (one server, one run):
  * aggregate generated tokens/s (all sessions' tokens / wall time of the phase),
  * TTFT p50/p99 (user frame sent -> first token frame, ms),
  * inter-token latency p50/p99 (gap between consecutive token frames of a turn, ms),
and the aggregate's ratio to the N = 1 figure of the same run. With --repeats R the whole sequence of
phases runs R times (interleaved, so that a slow or fast moment of this noisy machine touches every N
alike); the aggregate is the median over repeats, latencies are pooled.

Run: .venv/bin/python bench/load.py [--clients 1 4 16 32] [--turns 3] [--max-tokens 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary, percentile  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

TOPICS = ["the ocean", "mountains", "a city at night", "coffee", "trains", "gardening", "chess", "the moon",
          "bicycles", "rain", "libraries", "volcanoes", "bread", "music", "winter", "robots"]
FOLLOW_UPS = ["Tell me more about that.", "Can you give an example?", "Summarize it in two sentences."]


async def play(url: str, client: int, turns: int, max_tokens: int, out: dict, phase_id: int) -> None:
    """One session. Its seeds are unique to (phase, client, turn): answers, and so the conversations
    after their opening message, differ from every earlier phase's (no phase reuses another's KV beyond
    the system prompt and the opening message, which many users share in real life too)."""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        json.loads(await ws.recv())
        messages = [f"Write a short paragraph about {TOPICS[client % len(TOPICS)]}."] + FOLLOW_UPS
        for turn in range(turns):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "user", "content": messages[turn % len(messages)],
                                      "max_tokens": max_tokens, "temperature": 0.7, "seed": phase_id * 100_000 + client * 100 + turn}))
            last = None
            while True:
                frame = json.loads(await ws.recv())
                now = time.perf_counter()
                if frame["type"] == "token":
                    if last is None:
                        out["ttft"].append((now - sent) * 1000)
                    else:
                        out["itl"].append((now - last) * 1000)
                    last = now
                elif frame["type"] == "done":
                    out["tokens"] += frame["usage"]["completion_tokens"]
                    break
                else:
                    raise RuntimeError(frame)


_phase_ids = itertools.count(1)


async def phase(url: str, n: int, turns: int, max_tokens: int) -> dict:
    out = {"ttft": [], "itl": [], "tokens": 0}
    phase_id = next(_phase_ids)
    start = time.perf_counter()
    await asyncio.gather(*[play(url, i, turns, max_tokens, out, phase_id) for i in range(n)])
    out["seconds"] = time.perf_counter() - start
    return out


ADMIN = "bench-admin-token"


def engine_stats(url: str) -> dict:
    """The server's own step statistics (recent window, so mostly the phase just run)."""
    request = urllib.request.Request(url + "/api/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["engine"]


def phase_stats(before: dict, after: dict) -> dict:
    """What the engine did during one phase: differences of its cumulative counters."""
    def delta(name: str, key: str) -> float:
        return after[name][key] - before[name][key]

    steps = delta("step_ms", "count")
    return {"steps": steps, "busy_ms": delta("step_ms", "sum"),
            "step_ms": delta("step_ms", "sum") / max(steps, 1),
            "decode_batch": delta("decode_batch", "sum") / max(steps, 1),
            "step_tokens": delta("step_tokens", "sum") / max(steps, 1),
            "prefill_tokens": delta("step_tokens", "sum") - delta("decode_batch", "sum")}


def merge(runs: list[dict]) -> dict:
    """One row from repeated phases: the median-rate run's totals, everyone's latencies, median engine figures."""
    ordered = sorted(runs, key=lambda r: r["tokens"] / r["seconds"])
    mid = ordered[len(ordered) // 2]
    engine = {k: statistics.median(r["engine"][k] for r in runs) for k in mid["engine"]}
    return {"tokens": mid["tokens"], "seconds": mid["seconds"], "rates": [r["tokens"] / r["seconds"] for r in runs],
            "ttft": [x for r in runs for x in r["ttft"]], "itl": [x for r in runs for x in r["itl"]], "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    add_model_cache_argument(parser)
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), args.model_cache, "--admin-token", ADMIN, *args.server_arg).start()
        try:
            asyncio.run(phase(server.ws_url, 2, 1, 8))  # warm-up
            runs: dict[int, list[dict]] = {n: [] for n in args.clients}
            for _ in range(args.repeats):
                for n in args.clients:
                    before = engine_stats(server.url)
                    run = asyncio.run(phase(server.ws_url, n, args.turns, args.max_tokens))
                    run["engine"] = phase_stats(before, engine_stats(server.url))
                    runs[n].append(run)
            rows = [(n, merge(runs[n])) for n in args.clients]
        finally:
            server.stop()

    base = rows[0][1]["tokens"] / rows[0][1]["seconds"]
    print(f"\nmachine: {cpu_summary()}")
    print(f"{args.turns} turns per session, max_tokens {args.max_tokens}, temperature 0.7 (seeded), "
          f"{args.repeats} repeat(s): median aggregate\n")
    print("| sessions | generated tokens | wall s | aggregate tok/s | × N=1 | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
          "| ITL p99 ms | every repeat, tok/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, r in rows:
        rate = r["tokens"] / r["seconds"]
        print(f"| {n} | {r['tokens']} | {r['seconds']:.1f} | {rate:.1f} | {rate / base:.2f} | "
              f"{percentile(r['ttft'], 50):.0f} | {percentile(r['ttft'], 99):.0f} | "
              f"{percentile(r['itl'], 50):.0f} | {percentile(r['itl'], 99):.0f} | "
              f"{' '.join(f'{x:.0f}' for x in r['rates'])} |")
    print("\nServer side (engine statistics over each phase): forward passes, engine busy time, mean batch\n")
    print("| sessions | steps | engine busy % | step ms mean | decode batch mean | tokens/step mean | prefill tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        e = r["engine"]
        print(f"| {n} | {e['steps']:.0f} | {100 * e['busy_ms'] / 1000 / r['seconds']:.0f} | {e['step_ms']:.1f} | "
              f"{e['decode_batch']:.1f} | {e['step_tokens']:.1f} | {e['prefill_tokens']:.0f} |")


if __name__ == "__main__":
    main()
