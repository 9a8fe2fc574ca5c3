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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or a catalog name (default: the server's default model)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where catalog models are")
    add_model_cache_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--think", type=float, default=1.0, help="seconds between Q2's answer and the kill")
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

    result = {"model": name, "gguf": str(args.gguf), "cpu": cpu_summary(), "cpu_tag": cpu_tag(),
              "rounds": len(rounds), "max_tokens": args.max_tokens,
              "commands": {"llama_cpp": " ".join(peer_cmd)},
              "ours": [{k: v for k, v in r.items() if k != "messages"} for r in rounds],
              "llama_cpp": [{k: v for k, v in p.items() if k != "text"} for p in peer]}
    out = args.out or ROOT / "bench" / "results" / f"failover-{name}-{cpu_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
