"""KV-cache reuse across turns: time to first token (TTFT) with reuse vs full recompute.

Starts the chat server twice, one after the other, each with its own temporary data directory and
the shared model cache: once normally (the KV cache of a session's previous turns is reused), once
with --no-kv-reuse (every turn recomputes its whole prompt). Against each it plays the same 8-turn
greedy conversation (temperature 0), --repeats times with a new session each time, and prints per
turn the prompt length, the cached prompt tokens with reuse, the median server-reported TTFT
(`timings.ttft_ms`, milliseconds) of both servers and their ratio (recompute / reuse). Finally it
checks that both servers gave the same answers, as greedy decoding should.

Run from the repository root (takes a few minutes on 2 CPU cores):

    .venv/bin/python bench/kv_reuse.py [--repeats 3] [--max-tokens 64] [--model-cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
READY = "chatserver ready on http://"

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
CONVERSATION = [  # 8 user turns; history reaches about 2,000 prompt tokens by turn 8
    "Hi! My partner and I are planning our first trip to Portugal in May, for about a week. Where should we go?",
    ITINERARY,
    "Is the Sintra day trip worth it, or should we spend that day in Lisbon instead?",
    BUDGET,
    "What is the weather usually like in Lisbon and Porto in May? Will it be warm enough to swim?",
    PACKING,
    "Which Portuguese dishes should we absolutely try, and what should a vegetarian order?",
    "Thanks! Can you summarise the whole plan in a few short bullet points I can send to my partner?",
]


async def start_server(data_dir: Path, model_cache: Path, reuse: bool) -> tuple[asyncio.subprocess.Process, str]:
    """Start `python -m chatserver serve` on a free port; return the process and its WebSocket URL."""
    cmd = [sys.executable, "-m", "chatserver", "serve", "--host", "127.0.0.1", "--port", "0",
           "--data-dir", str(data_dir), "--model-cache", str(model_cache), "--log-level", "WARNING"]
    if not reuse:
        cmd.append("--no-kv-reuse")
    log = open(data_dir / "server.log", "wb")  # stderr to a file: an unread pipe could fill and block the server
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log)
    log.close()
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=300)).decode().strip()
    if not line.startswith(READY):
        await proc.wait()
        sys.exit(f"server did not start: {line!r}\n{(data_dir / 'server.log').read_text()[-2000:]}")
    return proc, "ws://" + line[len(READY):] + "/ws"


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    if await asyncio.wait_for(proc.wait(), timeout=60) != 0:
        print(f"warning: server exited with code {proc.returncode}", file=sys.stderr)


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
            turns.append({**frame, "answer": "".join(text), "client_ttft_ms": client_ttft_ms})
    return turns


async def run_mode(reuse: bool, args: argparse.Namespace) -> list[list[dict]]:
    """All repeats against one fresh server; result[repeat][turn] as returned by play()."""
    with tempfile.TemporaryDirectory(prefix="kv_reuse_bench_") as tmp:
        proc, url = await start_server(Path(tmp), args.model_cache, reuse)
        try:
            runs = []
            for i in range(args.repeats):
                started = time.perf_counter()
                runs.append(await play(url, args.max_tokens))
                print(f"  {'reuse' if reuse else 'recompute'} repeat {i + 1}/{args.repeats}: "
                      f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        finally:
            await stop_server(proc)
    return runs


def column(runs: list[list[dict]], turn: int, get) -> list:
    return [get(run[turn]) for run in runs]


def report(reuse: list[list[dict]], full: list[list[dict]]) -> None:
    med = statistics.median
    print(f"{'turn':>4} {'prompt_tokens':>13} {'cached':>6} {'TTFT reuse ms':>13} {'TTFT recompute ms':>17} {'ratio':>6}")
    ratios, totals = [], [0.0, 0.0, 0.0, 0.0]  # totals: server TTFT reuse/recompute, client TTFT reuse/recompute (ms)
    for t in range(len(CONVERSATION)):
        prompt = sorted(set(column(reuse, t, lambda d: d["usage"]["prompt_tokens"])
                            + column(full, t, lambda d: d["usage"]["prompt_tokens"])))
        cached = med(column(reuse, t, lambda d: d["usage"]["cached_tokens"]))
        ttft_reuse = med(column(reuse, t, lambda d: d["timings"]["ttft_ms"]))
        ttft_full = med(column(full, t, lambda d: d["timings"]["ttft_ms"]))
        totals[0] += ttft_reuse
        totals[1] += ttft_full
        totals[2] += med(column(reuse, t, lambda d: d["client_ttft_ms"]))
        totals[3] += med(column(full, t, lambda d: d["client_ttft_ms"]))
        ratio = ttft_full / ttft_reuse
        if t > 0:
            ratios.append(ratio)
        prompt_text = "/".join(map(str, prompt))  # several values only if the runs diverged
        print(f"{t + 1:>4} {prompt_text:>13} {cached:>6.0f} {ttft_reuse:>13.1f} {ttft_full:>17.1f} {ratio:>5.1f}x")
    print(f"summary: median ratio over turns 2-{len(CONVERSATION)} = {med(ratios):.1f}x; total TTFT (sum of per-turn "
          f"medians) reuse {totals[0]:.0f} ms vs recompute {totals[1]:.0f} ms; "
          f"client-measured {totals[2]:.0f} ms vs {totals[3]:.0f} ms")
    answers = lambda runs: [[d["answer"] for d in run] for run in runs]  # noqa: E731
    same = answers(reuse) == answers(full)
    print(f"answers identical: {'yes' if same else 'no'}")
    if not same:
        for r, (a, b) in enumerate(zip(answers(reuse), answers(full))):
            diff = [t + 1 for t in range(len(a)) if a[t] != b[t]]
            if diff:
                print(f"  repeat {r + 1}: answers differ at turns {diff}")
    print(f"each server deterministic across repeats: reuse {'yes' if len({str(a) for a in answers(reuse)}) == 1 else 'no'}, "
          f"recompute {'yes' if len({str(a) for a in answers(full)}) == 1 else 'no'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="conversations per server, new session each (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max answer tokens per turn (default 64)")
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".cache" / "models",
                        help="converted weights shared by both servers (default: .cache/models in the repo)")
    args = parser.parse_args()
    print("server with KV reuse ...", file=sys.stderr, flush=True)
    reuse = await run_mode(True, args)
    print("server with --no-kv-reuse ...", file=sys.stderr, flush=True)
    full = await run_mode(False, args)
    print(f"\n{len(CONVERSATION)} turns x {args.repeats} repeats, max_tokens={args.max_tokens}, temperature 0; "
          "TTFT = server timings.ttft_ms, median over repeats")
    report(reuse, full)


if __name__ == "__main__":
    asyncio.run(main())
