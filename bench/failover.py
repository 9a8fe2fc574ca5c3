"""A replica dies between turns of a ~2k-token conversation; the next turn goes to another replica. Ours with
the shared KV tier (two replicas, one database, one Redis: --redis-url), against what the same failover
costs without it (a replica that must recompute the conversation: ours without Redis, and llama.cpp's
llama-server, which has no shared tier, given the whole conversation on a fresh server).

Each round (a different long text, so no round reuses another's KV):
  1. on replica A: Q1 (a ~1.7k-token text and a question), then Q2: the "warm" turn, its KV in A's RAM;
     a twin session on A has the same two turns.
  2. --think seconds later (a person reading the answer; A writes the session's KV to Redis behind the
     turn meanwhile), kill -9 A.
  3. Q3 on replica B, resuming the session (its KV written to Redis by A after Q2): the "failover" turn.
  4. Q3 on replica C (no Redis), resuming the twin: the "recompute" turn.
  5. llama-server, fresh: the same five messages, Q3 last: its "failover".
Measured by the client: time to first token; ours also reports the prompt tokens it computed (prompt -
cached). The answers to Q3 on B and C must be equal (greedy): KV from the shared tier answers as a
recomputation does. Medians over --rounds.

Target (issue 20): failover TTFT <= 2x the warm TTFT, and the tokens computed <= the new message's.

Then --kills rounds of kill -9 at a random moment of an answer, on a cluster of named replicas (leases;
PostgreSQL from scripts/postgres.sh, whose advisory locks free a dead replica's sessions at once; Redis):
A streams Q3's answer and dies after a random number of its tokens; the client resumes on B (retrying
while B says session_elsewhere), which must show every question the client saw acknowledged, in order,
with Q3's answer `interrupted` and a prefix of what the client read; then Q4 on B; then replica C
(no Redis) regenerates Q4's answer from scratch, which must equal B's (greedy).

Run from the repository root (a few minutes on 2 cores; Redis from Debian's redis-server):

    .venv/bin/python bench/failover.py [--model PATH|CATALOG_NAME] [--rounds 5] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODELS_DIR, ROOT, add_model_cache_argument, cpu_summary  # noqa: E402
from bench.peer_serve import (cpu_tag, find_or_build_llama_cpp, free_port, long_text, resolve,  # noqa: E402
                              start_llama_server, stream)
from tests.helpers.real_server import RealServer  # noqa: E402

Q2 = "Which ship is named most often, and what did it carry?"
Q3 = "Thank you. Now summarize the whole text in two sentences."
REDIS = ROOT / "scripts" / "redis.sh"


def q1(seed: int) -> str:
    return long_text(seed, sentences=100) + "\n\nWhat did the committee review, and what did the clerk find?"


class Chat:
    """One WebSocket connection to a replica; turn() returns the turn's measures and text."""

    def __init__(self, url: str, max_tokens: int):
        self.url, self.max_tokens, self.ws = url, max_tokens, None

    async def open(self, **hello) -> dict:
        self.ws = await websockets.connect(self.url.replace("http://", "ws://") + "/ws", max_size=None)
        await self.ws.send(json.dumps({"type": "hello", **hello}))
        frame = json.loads(await self.ws.recv())
        assert frame["type"] == "session", frame
        return frame

    async def turn(self, content: str) -> dict:
        sent = time.perf_counter()
        await self.ws.send(json.dumps({"type": "user", "content": content, "max_tokens": self.max_tokens,
                                       "temperature": 0}))
        first, text = None, []
        while True:
            f = json.loads(await self.ws.recv())
            if f["type"] == "token":
                first = first or time.perf_counter()
                text.append(f["text"])
            elif f["type"] == "done":
                usage = f["usage"]
                return {"ttft_s": first - sent, "cache": f["cache"], "prompt": usage["prompt_tokens"],
                        "cached": usage["cached_tokens"], "computed": usage["prompt_tokens"] - usage["cached_tokens"],
                        "text": "".join(text)}
            elif f["type"] == "error":
                raise RuntimeError(f)

    async def close(self) -> None:
        await self.ws.close()


def start_replica(root: Path, name: str, args, *flags: str) -> RealServer:
    return RealServer(root / name, args.model_cache, "--model", str(args.gguf),
                      "--database-url", f"sqlite+aiosqlite:///{root / 'chat.db'}", *flags).start(600)


async def round_on(a: RealServer, b: RealServer, c: RealServer, seed: int, max_tokens: int, think: float) -> dict:
    chat, twin = Chat(a.url, max_tokens), Chat(a.url, max_tokens)
    session, twin_session = await chat.open(), await twin.open()
    first = await chat.turn(q1(seed))
    await twin.turn(q1(seed))
    warm = await chat.turn(Q2)
    await twin.turn(Q2)
    await asyncio.sleep(think)
    a.stop(signal.SIGKILL)
    moved = Chat(b.url, max_tokens)
    await moved.open(session_id=session["session_id"], resume_token=session["resume_token"])
    failover = await moved.turn(Q3)
    cold = Chat(c.url, max_tokens)
    await cold.open(session_id=twin_session["session_id"], resume_token=twin_session["resume_token"])
    recompute = await cold.turn(Q3)
    await moved.close()
    await cold.close()
    messages = [{"role": "user", "content": q1(seed)}, {"role": "assistant", "content": first["text"]},
                {"role": "user", "content": Q2}, {"role": "assistant", "content": warm["text"]},
                {"role": "user", "content": Q3}]
    return {"warm": warm, "failover": failover, "recompute": recompute, "messages": messages}


async def resume(url: str, session: dict, max_tokens: int, deadline_s: float = 60.0) -> tuple[Chat, dict]:
    """Open the session on a replica, waiting while another one still holds it (session_elsewhere)."""
    deadline = time.monotonic() + deadline_s
    while True:
        chat = Chat(url, max_tokens)
        chat.ws = await websockets.connect(url.replace("http://", "ws://") + "/ws", max_size=None)
        await chat.ws.send(json.dumps({"type": "hello", "session_id": session["session_id"],
                                       "resume_token": session["resume_token"]}))
        frame = json.loads(await chat.ws.recv())
        if frame["type"] == "session":
            return chat, frame
        await chat.close()
        if frame.get("code") != "session_elsewhere" or time.monotonic() > deadline:
            raise RuntimeError(frame)
        await asyncio.sleep(min(frame.get("retry_after", 1), 1.0))


async def kill_round(a: RealServer, b: RealServer, c: RealServer, seed: int, max_tokens: int, rng) -> dict:
    chat = Chat(a.url, max_tokens)
    session = await chat.open()
    await chat.turn(q1(seed))
    await chat.turn(Q2)
    kill_after = rng.randint(1, max_tokens - 1)
    await chat.ws.send(json.dumps({"type": "user", "content": Q3, "max_tokens": max_tokens, "temperature": 0}))
    acknowledged, read = False, []
    while len(read) < kill_after:
        f = json.loads(await chat.ws.recv())
        acknowledged = acknowledged or f["type"] == "turn"
        if f["type"] == "token":
            read.append(f["text"])
        elif f["type"] in ("done", "error"):
            break
    a.stop(signal.SIGKILL)
    started = time.perf_counter()
    moved, frame = await resume(b.url, session, max_tokens)
    took_s = time.perf_counter() - started
    shown = [(m["role"], m["content"]) for m in frame["messages"]]
    questions = [content for role, content in shown if role == "user"]
    last = frame["messages"][-1]
    problems = []
    if questions[:2] != [q1(seed), Q2] or (acknowledged and (len(questions) < 3 or questions[2] != Q3)):
        problems.append(f"questions lost or out of order: {[q[:20] for q in questions]}")
    if len(questions) == 3 and not (last["role"] == "assistant" and last.get("finish_reason") == "interrupted"
                                    and "".join(read).startswith(last["content"])):
        problems.append(f"Q3's answer not a stored prefix of what was read: {last}")
    answer = await moved.turn("And what happened next?")
    await moved.close()
    regen, _ = await resume(c.url, session, max_tokens)  # B let the session go when the client left
    await regen.ws.send(json.dumps({"type": "regenerate", "max_tokens": max_tokens, "temperature": 0}))
    text = []
    while (f := json.loads(await regen.ws.recv()))["type"] not in ("done", "error"):
        if f["type"] == "token":
            text.append(f["text"])
    await regen.close()
    if "".join(text) != answer["text"]:
        problems.append("B's answer after the failover differs from C's recomputed one")
    return {"kill_after_tokens": kill_after, "acknowledged": acknowledged, "resume_s": took_s,
            "answer": {k: v for k, v in answer.items() if k != "text"}, "problems": problems}


def kills_part(args, root: Path) -> list[dict]:
    import random

    rng = random.Random(7)
    root.chmod(0o755)  # PostgreSQL runs as the postgres user, which must get through
    pg = ROOT / "scripts" / "postgres.sh"
    db = subprocess.run(["bash", str(pg), "start", str(root / "pg"), "--no-fsync"], check=True, capture_output=True,
                        text=True).stdout.strip().splitlines()[-1]
    url = subprocess.run(["bash", str(REDIS), "start", str(root / "redis2"), "2048"], check=True,
                         capture_output=True, text=True).stdout.strip()

    def replica(name: str, *flags: str) -> RealServer:
        return RealServer(root / f"k{name}", args.model_cache, "--model", str(args.gguf), "--database-url", db,
                          "--replica-name", name, *flags).start(600)

    b, c = replica("rb", "--redis-url", url), replica("rc")
    rounds = []
    try:
        for r in range(args.kills):
            a = replica("ra", "--redis-url", url)
            print(f"kill round {r} ...", file=sys.stderr, flush=True)
            rounds.append(asyncio.run(kill_round(a, b, c, 1000 + r, args.max_tokens, rng)))
    finally:
        for server in (b, c):
            server.stop()
        subprocess.run(["bash", str(REDIS), "stop", str(root / "redis2")], check=False)
        subprocess.run(["bash", str(pg), "stop", str(root / "pg")], check=False)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or a catalog name (default: the server's default model)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where catalog models are")
    add_model_cache_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--think", type=float, default=1.0, help="seconds between Q2's answer and the kill")
    parser.add_argument("--kills", type=int, default=20, help="rounds killing A at a random moment of an answer")
    parser.add_argument("--llama-server", type=Path, help="an existing llama-server binary (default: found or built)")
    parser.add_argument("--llama-cache", type=Path, default=ROOT / ".cache" / "llama.cpp", help="sdist and builds")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/failover-<model>-<cpu>.json)")
    args = parser.parse_args()
    name, args.gguf = resolve(args.model, args.models_dir)
    llama_server, _ = find_or_build_llama_cpp(args.llama_cache, args.llama_server)
    repack = "amx_tile" not in Path("/proc/cpuinfo").read_text().split()

    rounds = []
    with tempfile.TemporaryDirectory(prefix="failover_") as tmp:
        root = Path(tmp)
        url = subprocess.run(["bash", str(REDIS), "start", str(root / "redis"), "2048"], check=True,
                             capture_output=True, text=True).stdout.strip()
        b = start_replica(root, "b", args, "--redis-url", url)
        c = start_replica(root, "c", args)
        try:
            for seed in range(-1, args.rounds):  # round -1 warms the replicas up
                a = start_replica(root, "a", args, "--redis-url", url)
                print(f"round {seed} ...", file=sys.stderr, flush=True)
                result = asyncio.run(round_on(a, b, c, seed, args.max_tokens, args.think))
                if seed >= 0:
                    rounds.append(result)
        finally:
            for server in (b, c):
                server.stop()
            subprocess.run(["bash", str(REDIS), "stop", str(root / "redis")], check=False)
        kills = kills_part(args, root) if args.kills else []

    port = free_port()
    peer_cmd = [str(llama_server), "-m", str(args.gguf), "-t", "2", "-np", "1", "-c", "4096", "--host", "127.0.0.1",
                "--port", str(port), *([] if repack else ["--no-repack"])]
    args.llama_cache.mkdir(parents=True, exist_ok=True)
    proc = start_llama_server(peer_cmd, port, args.llama_cache / "llama-server-failover.log")
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                    timeout=600, default_headers={"Connection": "close"})
        peer = [asyncio.run(stream((client, "peer"), r["messages"], args.max_tokens, ignore_eos=False))
                for r in rounds]
    finally:
        proc.terminate()
        proc.wait(60)

    def med(step: str, key: str) -> float:
        return statistics.median(r[step][key] for r in rounds)

    ms = 1000
    warm, failover, recompute = med("warm", "ttft_s") * ms, med("failover", "ttft_s") * ms, med("recompute", "ttft_s") * ms
    llama = statistics.median(p["ttft"] for p in peer) * ms
    equal = sum(r["failover"]["text"] == r["recompute"]["text"] for r in rounds)
    print(f"\nmodel: {name} ({args.gguf.name}); machine: {cpu_summary()}\nmedian of {len(rounds)} rounds; "
          f"{args.max_tokens}-token greedy answers; conversation before Q3: {med('failover', 'prompt'):.0f} prompt tokens\n")
    print("| turn | TTFT ms | vs warm | cache | prompt tokens computed / prompt |")
    print("|---|---:|---:|---|---:|")
    print(f"| warm: Q2 on replica A (KV in RAM) | {warm:.1f} | 1.00 | ram | "
          f"{med('warm', 'computed'):.0f} / {med('warm', 'prompt'):.0f} |")
    print(f"| **failover**: Q3 on replica B after kill -9 of A (shared tier) | {failover:.1f} | {failover / warm:.2f} | "
          f"{rounds[0]['failover']['cache']} | {med('failover', 'computed'):.0f} / {med('failover', 'prompt'):.0f} |")
    print(f"| recompute: Q3 on replica C (no shared tier) | {recompute:.1f} | {recompute / warm:.2f} | "
          f"{rounds[0]['recompute']['cache']} | {med('recompute', 'computed'):.0f} / {med('recompute', 'prompt'):.0f} |")
    print(f"| llama.cpp: Q3 on a fresh llama-server | {llama:.1f} | {llama / warm:.2f} | - | "
          f"{statistics.median(p['prompt'] - (p['cached'] or 0) for p in peer):.0f} / "
          f"{statistics.median(p['prompt'] for p in peer):.0f} |")
    print(f"\nfailover / llama.cpp: {failover / llama:.2f}; Q3's answers equal on B (shared tier) and C "
          f"(recomputed): {equal} / {len(rounds)}")

    if kills:
        problems = [p for k in kills for p in k["problems"]]
        print(f"\nkill -9 at a random moment of an answer, {len(kills)} rounds (PostgreSQL, leases, Redis): "
              f"resumed on B after a median {statistics.median(k['resume_s'] for k in kills) * 1000:.0f} ms; "
              f"acknowledged questions lost or out of order: "
              f"{sum('questions' in p for p in problems)}; interrupted answers not a prefix of what was read: "
              f"{sum('prefix' in p for p in problems)}; B's next answer unlike C's recomputed one: "
              f"{sum('differs' in p for p in problems)}; next turn on B: TTFT "
              f"{statistics.median(k['answer']['ttft_s'] for k in kills) * 1000:.0f} ms, cache "
              f"{sorted({k['answer']['cache'] for k in kills})}, computed "
              f"{statistics.median(k['answer']['computed'] for k in kills):.0f} / "
              f"{statistics.median(k['answer']['prompt'] for k in kills):.0f} prompt tokens")

    result = {"model": name, "gguf": str(args.gguf), "cpu": cpu_summary(), "cpu_tag": cpu_tag(),
              "rounds": len(rounds), "max_tokens": args.max_tokens,
              "commands": {"llama_cpp": " ".join(peer_cmd)},
              "ours": [{k: v for k, v in r.items() if k != "messages"} for r in rounds],
              "llama_cpp": [{k: v for k, v in p.items() if k != "text"} for p in peer], "kills": kills}
    out = args.out or ROOT / "bench" / "results" / f"failover-{name}-{cpu_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
