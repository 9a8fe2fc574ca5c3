"""Split brain on real processes: the replica serving a session is paused (SIGSTOP) mid-answer, another one
takes the session once the paused one's lease has run out and answers a new question, then the paused one
goes on (SIGCONT). Its stale commit must be refused (fencing by the lease's epoch): the transcript holds no
answer from it, no duplicated and no interleaved turn. Two replicas (--replica-name) on one PostgreSQL
(scripts/postgres.sh; the paused replica's connection stays open, so only the lease's expiry frees the
session), --lease-seconds 3.

Run from the repository root (a few minutes):

    .venv/bin/python bench/split_brain.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, add_model_cache_argument, cpu_summary  # noqa: E402
from bench.failover import resume  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

LEASE_S = 3.0
STORY = "Tell me a long story about a lighthouse keeper and a storm."
AFTER = "Now tell me about the harbour instead."


async def one_round(a: RealServer, b: RealServer, r: int) -> dict:
    ws = await websockets.connect(a.ws_url, max_size=None)
    await ws.send(json.dumps({"type": "hello"}))
    session = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "user", "content": f"Round {r}: hello.", "max_tokens": 8, "temperature": 0}))
    while json.loads(await ws.recv())["type"] != "done":
        pass
    await ws.send(json.dumps({"type": "user", "content": STORY, "max_tokens": 200, "temperature": 0}))
    while json.loads(await ws.recv())["type"] != "token":
        pass
    a.proc.send_signal(signal.SIGSTOP)  # paused mid-answer, its connections and locks held
    started = time.perf_counter()
    chat, frame = await resume(b.url, session, 16, deadline_s=60)
    taken_s = time.perf_counter() - started
    answer_b = await chat.turn(AFTER)
    a.proc.send_signal(signal.SIGCONT)  # the paused replica goes on: its answer's commit must be refused
    outcome = None
    try:
        while (f := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] not in ("done", "error"):
            pass
        outcome = f
    except (websockets.ConnectionClosed, asyncio.TimeoutError) as exc:
        outcome = {"type": "closed", "detail": str(exc)}
    await ws.close()
    await chat.close()
    await asyncio.sleep(0.5)
    check, final = await resume(b.url, session, 16)
    await check.close()
    shown = [(m["role"], m["content"], m.get("finish_reason")) for m in final["messages"]]
    problems = []
    roles = [role for role, _, _ in shown]
    if any(x == y for x, y in zip(roles, roles[1:])):
        problems.append(f"interleaved turns: {roles}")
    questions = [c for role, c, _ in shown if role == "user"]
    if questions != [f"Round {r}: hello.", STORY, AFTER]:
        problems.append(f"questions: {[q[:20] for q in questions]}")
    if outcome.get("type") == "done" and outcome.get("message_id") is not None:
        problems.append("the paused replica's answer was stored")
    return {"taken_after_s": taken_s, "b_ttft_s": answer_b["ttft_s"], "b_cache": answer_b["cache"],
            "paused_outcome": {k: outcome.get(k) for k in ("type", "code", "message_id")},
            "transcript_roles": roles, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_cache_argument(parser)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="split_brain_") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as the postgres user, which must get through
        pg = ROOT / "scripts" / "postgres.sh"
        db = subprocess.run(["bash", str(pg), "start", str(root / "pg"), "--no-fsync"], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]

        def replica(name: str) -> RealServer:
            return RealServer(root / name, args.model_cache, "--database-url", db, "--replica-name", name,
                              "--lease-seconds", str(LEASE_S)).start(600)

        a, b = replica("ra"), replica("rb")
        try:
            for r in range(args.rounds):
                print(f"round {r} ...", file=sys.stderr, flush=True)
                results.append(asyncio.run(one_round(a, b, r)))
        finally:
            a.proc.send_signal(signal.SIGCONT)
            for server in (a, b):
                server.stop()
            subprocess.run(["bash", str(pg), "stop", str(root / "pg")], check=False)
    problems = [p for r in results for p in r["problems"]]
    outcomes = sorted({json.dumps(r["paused_outcome"]) for r in results})
    print(f"\nmachine: {cpu_summary()}; {len(results)} rounds; --lease-seconds {LEASE_S}")
    print(f"B took the session {min(r['taken_after_s'] for r in results):.1f}-{max(r['taken_after_s'] for r in results):.1f} s "
          f"after the pause (the lease's run-out); the paused replica, resumed: {outcomes}")
    print(f"answers of the paused replica stored: {sum('stored' in p for p in problems)}; transcripts with "
          f"interleaved or duplicated turns: {sum('interleaved' in p for p in problems)}; questions lost or "
          f"out of order: {sum('questions' in p for p in problems)}")
    out = ROOT / "bench" / "results" / "split_brain.json"
    out.write_text(json.dumps({"cpu": cpu_summary(), "lease_seconds": LEASE_S, "rounds": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
