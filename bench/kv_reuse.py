"""KV-cache reuse across turns: time to first token (TTFT) with reuse vs full recompute.

Starts the chat server twice, one after the other, each with its own temporary data directory and
the shared model cache: once normally (the KV cache of a session's previous turns is reused), once
with --no-kv-reuse (every turn recomputes its whole prompt). Against each it plays the same 8-turn
greedy conversation (temperature 0), --repeats times with a new session each time, and prints per
turn the prompt length, the cached prompt tokens with reuse, the median server-reported TTFT
(`timings.ttft_ms`, milliseconds) of both servers and their ratio (recompute / reuse). Finally it
checks that both servers gave the same answers, as greedy decoding should.

Run from the repository root (takes a few minutes on 2 CPU cores):

    .venv/bin/python bench/kv_reuse.py [--repeats 3] [--max-tokens 64] [--model-cache DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

ITINERARY = (
    "Here is the draft itinerary my friend sent me, pasted as is: Day 1, arrive in Lisbon around noon, check in "
    "at a guesthouse in Alfama, walk up to the Castelo de Sao Jorge for the view, dinner with fado in a small "
    "tavern. Day 2, tram 28 in the morning, the Baixa and Chiado districts, the Gulbenkian museum in the "
    "afternoon, sunset at the Miradouro da Senhora do Monte. Day 3, day trip to Sintra by train: Pena Palace, "
    "the Moorish Castle and Quinta da Regaleira, back late. Day 4, Belem: the tower, the Jeronimos monastery, "
    "pasteis de nata at the famous bakery, then the LX Factory in the evening. Day 5, train to Porto, about "
    "three hours, check in near Ribeira, walk along the river, cross the Dom Luis bridge to the port cellars in "
    "Vila Nova de Gaia. Day 6, Livraria Lello early to avoid the queue, the Sao Bento station tiles, the Bolhao "
    "market, a francesinha for lunch. Day 7, boat trip up the Douro valley with a stop at a wine estate. Day 8, "
    "fly home from Porto in the afternoon. What do you think of the pace?"
)
BUDGET = (
    "Some numbers so you can help with the budget. Flights cost about 180 euros each way per person and there "
    "are two of us. The guesthouse in Lisbon is 95 euros a night for four nights, the hotel in Porto is 110 a "
    "night for three nights. We think food will be around 60 euros a day per person if we eat one proper meal "
    "and snack the rest of the time. The Sintra palaces together are roughly 40 euros per person, the Douro boat "
    "trip with lunch is 95 per person, and a Lisboa Card for 72 hours is 43 euros. The train from Lisbon to "
    "Porto is 25 to 35 euros depending on the class. We would also like to keep 200 euros aside for surprises, "
    "souvenirs and a nice dinner on the last night. Our total budget is 3,000 euros for both of us. Are we "
    "within budget, and where could we save money if we need to?"
)
PACKING = (
    "One more paste, this is the packing list I usually take for a week in spring: two pairs of trousers, one "
    "pair of shorts, five t-shirts, one warm sweater, a light rain jacket, comfortable walking shoes, sandals, "
    "a swimsuit, toiletries in a small bag, sunscreen, sunglasses, a reusable water bottle, a phone charger and "
    "a power bank, a travel adapter, a paperback book, earplugs for the plane, a small first aid kit with "
    "plasters and painkillers, copies of our passports, and a daypack for the excursions. We want to travel "
    "with hand luggage only. Is anything missing for Portugal in May, and what can I leave at home?"
)
SINTRA = (
    "I found this on a travel blog: Sintra is a small town in the hills about forty minutes by train from Lisbon's "
    "Rossio station. Trains leave every twenty minutes and a return ticket costs under five euros. The town is "
    "famous for its romantic palaces and gardens, which were summer retreats for the Portuguese royal family. "
    "The colourful Pena Palace sits on top of a hill and is the most visited, so buy a timed ticket online and go "
    "first thing in the morning. The Moorish Castle is a ruin with walls you can walk along, and on a clear day "
    "you can see the ocean. Quinta da Regaleira has a mysterious initiation well with a spiral staircase going "
    "down into the ground and tunnels that lead to a lake. Monserrate Palace is quieter and has beautiful "
    "botanical gardens. The hills are steep, so the local bus 434 is useful, though it is often crowded. Many "
    "visitors try to see everything in one day and end up exhausted; two or three sights are plenty. "
    "So, is the Sintra day trip worth it, or should we spend that day in Lisbon instead?"
)
SUMMARY = (
    "Thanks! Here is the message I drafted for my partner, can you check it and shorten it into a few bullet "
    "points? Hi love, I talked the trip through and here is where we are. We fly to Lisbon on a Saturday in mid "
    "May and stay four nights in Alfama, then take the train to Porto for three nights and fly home from there. "
    "In Lisbon we do the castle, the tram, Belem and the pastries, and one day in Sintra where we only see Pena "
    "and Regaleira so we are not too tired. In Porto we walk by the river, visit a port cellar, and take the "
    "boat up the Douro with lunch at a wine estate. The budget works if we keep food to about sixty euros a day "
    "each, and we can save on the Lisboa Card if we walk a lot. The weather should be warm but the ocean will "
    "still be cold, so swimming is optional. We only take hand luggage, so pack light and bring good shoes, a "
    "rain jacket and a sweater for the evenings. I will book the flights tonight unless you have objections."
)
CONVERSATION = [  # 8 user turns; the prompt reaches about 1,700 tokens by turn 8 (64-token answers)
    "Hi, I need help planning a vacation. We have one week in May and we are thinking about Portugal. Any ideas?",
    ITINERARY,
    SINTRA,
    BUDGET,
    "What is the weather usually like in Lisbon and Porto in May? Will it be warm enough to swim?",
    PACKING,
    "Which Portuguese dishes should we absolutely try, and what should a vegetarian order?",
    SUMMARY,
]


async def play(url: str, max_tokens: int) -> list[dict]:
    """One conversation in a new session. Per turn: the done frame, the answer text, client-side TTFT (ms)."""
    turns = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        frame = json.loads(await ws.recv())
        assert frame["type"] == "session", frame
        for content in CONVERSATION:
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "user", "content": content, "max_tokens": max_tokens, "temperature": 0}))
            text, client_ttft_ms = [], None
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "token":
                    if client_ttft_ms is None:
                        client_ttft_ms = (time.perf_counter() - t0) * 1000
                    text.append(frame["text"])
                elif frame["type"] == "done":
                    break
                else:
                    raise RuntimeError(f"unexpected frame: {frame}")
            if client_ttft_ms is None:  # no token at all: count the time to done
                client_ttft_ms = (time.perf_counter() - t0) * 1000
            turns.append({**frame, "answer": "".join(text), "client_ttft_ms": client_ttft_ms})
    return turns


async def run_mode(reuse: bool, args: argparse.Namespace) -> list[list[dict]]:
    """All repeats against one fresh server; result[repeat][turn] as returned by play()."""
    if os.getloadavg()[0] > 1.5:  # 1-minute load average (runnable processes); a previous server alone gives ~1
        print(f"  warning: load average {os.getloadavg()[0]:.1f}: other processes share the CPU, timings will be noisy",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kv_reuse_bench_") as tmp:
        flags = () if reuse else ("--no-kv-reuse",)
        server = await asyncio.to_thread(RealServer(Path(tmp), args.model_cache, "--host", "127.0.0.1", *flags).start)
        try:
            runs = []
            for i in range(args.repeats):
                started = time.perf_counter()
                runs.append(await play(server.ws_url, args.max_tokens))
                print(f"  {'reuse' if reuse else 'recompute'} repeat {i + 1}/{args.repeats}: "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        finally:
            if (code := await asyncio.to_thread(server.stop)) != 0:  # its warnings went to stderr
                print(f"warning: server exited with code {code}", file=sys.stderr)
    return runs


def medians(runs: list[list[dict]], get) -> list[float]:
    """Per turn, the median over repeats of get(done frame)."""
    return [statistics.median(get(run[t]) for run in runs) for t in range(len(CONVERSATION))]


def report(reuse: list[list[dict]], full: list[list[dict]]) -> None:
    prompt = medians(reuse, lambda d: d["usage"]["prompt_tokens"])
    cached = medians(reuse, lambda d: d["usage"]["cached_tokens"])
    ttft_reuse, ttft_full = (medians(runs, lambda d: d["timings"]["ttft_ms"]) for runs in (reuse, full))  # ms
    client_reuse, client_full = (medians(runs, lambda d: d["client_ttft_ms"]) for runs in (reuse, full))  # ms
    ratios = [f / r for f, r in zip(ttft_full, ttft_reuse)]
    print(f"{'turn':>4} {'prompt_tokens':>13} {'cached':>6} {'TTFT reuse ms':>13} {'TTFT recompute ms':>17} {'ratio':>6}")
    for t in range(len(CONVERSATION)):
        print(f"{t + 1:>4} {prompt[t]:>13.0f} {cached[t]:>6.0f} {ttft_reuse[t]:>13.1f} {ttft_full[t]:>17.1f} "
              f"{ratios[t]:>5.1f}x")
    print(f"summary: median ratio over turns 2-{len(CONVERSATION)} = {statistics.median(ratios[1:]):.1f}x; "
          f"total TTFT (sum of per-turn medians) reuse {sum(ttft_reuse):.0f} ms vs recompute {sum(ttft_full):.0f} ms "
          f"(client-measured {sum(client_reuse):.0f} ms vs {sum(client_full):.0f} ms)")
    answers_reuse, answers_full = ([[d["answer"] for d in run] for run in runs] for runs in (reuse, full))
    print(f"answers identical: {'yes' if answers_reuse == answers_full else 'no'}")
    for r, (a, b) in enumerate(zip(answers_reuse, answers_full)):
        if a != b:
            print(f"  repeat {r + 1}: answers differ at turns {[t + 1 for t in range(len(a)) if a[t] != b[t]]}")
    for name, answers in (("reuse", answers_reuse), ("recompute", answers_full)):
        if any(a != answers[0] for a in answers):
            print(f"  warning: {name} answers differ between repeats")
    if len({tuple(d["usage"]["prompt_tokens"] for d in run) for run in reuse + full}) > 1:
        print("  warning: prompt_tokens differ between runs (the table shows medians)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="conversations per server, new session each (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max answer tokens per turn (default 64)")
    add_model_cache_argument(parser)
    parser.add_argument("--json", type=Path, help="also write every done frame and answer to this file")
    args = parser.parse_args()
    print("server with KV reuse ...", file=sys.stderr, flush=True)
    reuse = await run_mode(True, args)
    print("server with --no-kv-reuse ...", file=sys.stderr, flush=True)
    full = await run_mode(False, args)
    print(f"\nmachine: {cpu_summary()}")
    print(f"{len(CONVERSATION)} turns x {args.repeats} repeats, max_tokens={args.max_tokens}, temperature 0; "
          "TTFT = server timings.ttft_ms, median over repeats")
    report(reuse, full)
    if args.json:
        args.json.write_text(json.dumps({"reuse": reuse, "recompute": full}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
