"""What a cluster takes for a workload (default: 1M stored sessions, 10k of them active at once), from figures
measured here: the model's KV bytes per token (its GGUF header), one replica's aggregate decode rate with
16 streams (bench/results/peer_serve-<model>-<cpu>.json, written by bench/peer_serve.py), PostgreSQL's
cost of a turn's commits (a throwaway server from scripts/postgres.sh: user message + answer, each fenced
by the replica's lease, at 16 writers at once), and Redis's rate for this model's 256-token chunks
(scripts/redis.sh, through the shared tier's own client). docs/SCALING.md shows a run and explains it.

Run from the repository root (about a minute):

    .venv/bin/python bench/sizing.py [--model NAME] [--sessions 1000000] [--active 10000] [--tokens 2000]
        [--turn-every-s 60] [--answer-tokens 150] [--warm-sessions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODELS_DIR, ROOT, add_model_cache_argument, cpu_summary  # noqa: E402
from bench.peer_serve import cpu_tag, kv_token_bytes, resolve  # noqa: E402
from storage import (KVLayout, Leases, RedisKVStore, TranscriptStore, create_db_engine, db_sessionmaker,  # noqa: E402
                     upgrade)

CHUNK = 256  # tokens per chunk of the KV tiers


def measure_postgres(root: Path, writers: int = 16, turns: int = 40) -> dict:
    """Per turn: the user message and the answer, each in a transaction fenced by the lease."""
    url = subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "start", str(root / "pg")], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    try:
        upgrade(url)

        async def run() -> dict:
            engine = create_db_engine(url)
            store, leases = TranscriptStore(db_sessionmaker(engine)), Leases(db_sessionmaker(engine), "r1", 30)
            latencies = []

            async def writer(w: int) -> None:
                sid = f"s{w}"
                await store.create(sid, "h" * 64, "m")
                lease = await leases.acquire(sid)
                for t in range(turns):
                    started = time.perf_counter()
                    q = await store.add_message(sid, "user", f"question {t}", lease=lease)
                    await store.add_message(sid, "assistant", "an answer " * 60, finish_reason="stop",
                                            parent_id=q.id, lease=lease)
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(writer(w) for w in range(writers)))
            wall = time.perf_counter() - started
            await engine.dispose()
            return {"turn_commit_ms_median": statistics.median(latencies) * 1000,
                    "turns_per_s": writers * turns / wall, "writers": writers}

        return asyncio.run(run())
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "postgres.sh"), "stop", str(root / "pg")], check=False)


def measure_redis(root: Path, token_bytes: int, chunks: int = 40) -> dict:
    """Writes and reads of whole sessions of `chunks` distinct 256-token chunks through the shared tier."""
    url = subprocess.run(["bash", str(ROOT / "scripts" / "redis.sh"), "start", str(root / "redis"), "4096"],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        head_dim, kv_heads = 64, 1
        layers = max(1, token_bytes // (2 * kv_heads * head_dim * 2))
        layout = KVLayout(layers, kv_heads, head_dim, torch.float16, "sizing")
        tier = RedisKVStore(url, layout, ttl_seconds=3600)
        n = chunks * CHUNK
        data = torch.randn(layers, 2, kv_heads, n, head_dim).half()
        started = time.perf_counter()
        tier.write("s", data, list(range(n)))
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        tier.read_into("s", lambda k: torch.empty(layers, 2, kv_heads, k, head_dim, dtype=torch.float16))
        read_s = time.perf_counter() - started
        nbytes = n * layout.token_bytes()
        return {"write_mb_per_s": nbytes / write_s / 1e6, "read_mb_per_s": nbytes / read_s / 1e6,
                "chunk_bytes": CHUNK * layout.token_bytes()}
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "redis.sh"), "stop", str(root / "redis")], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or a catalog name (default: the server's default model)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    add_model_cache_argument(parser)
    parser.add_argument("--sessions", type=int, default=1_000_000, help="stored sessions")
    parser.add_argument("--active", type=int, default=10_000, help="sessions in a conversation at once")
    parser.add_argument("--tokens", type=int, default=2_000, help="tokens of an average conversation")
    parser.add_argument("--turn-every-s", type=float, default=60.0, help="seconds between turns of an active session")
    parser.add_argument("--answer-tokens", type=int, default=150)
    parser.add_argument("--warm-sessions", type=int, default=None,
                        help="sessions whose KV Redis should keep (default: the active ones, so that any failover is warm)")
    parser.add_argument("--headroom", type=float, default=1.5, help="capacity over the average demand")
    args = parser.parse_args()
    args.warm_sessions = args.active if args.warm_sessions is None else args.warm_sessions
    name, gguf = resolve(args.model, args.models_dir)
    token_bytes = kv_token_bytes(gguf, args.model_cache)
    node_file = ROOT / "bench" / "results" / f"peer_serve-{name}-{cpu_tag()}.json"
    node = json.loads(node_file.read_text())["ours"]
    with tempfile.TemporaryDirectory(prefix="sizing_") as tmp:
        Path(tmp).chmod(0o755)  # run as root, PostgreSQL runs as the postgres user, which must get through
        pg = measure_postgres(Path(tmp))
        rd = measure_redis(Path(tmp), token_bytes)

    turns_per_s = args.active / args.turn_every_s
    decode_demand = turns_per_s * args.answer_tokens  # tok/s
    replica_rate = node["sixteen_streams_tok_per_s"]
    replicas = max(1, round(decode_demand * args.headroom / replica_rate + 0.499))
    conv_bytes = args.tokens * token_bytes
    ram_per_replica = args.active / replicas * conv_bytes
    redis_bytes = args.warm_sessions * conv_bytes
    disk_bytes = args.sessions * conv_bytes
    redis_write = turns_per_s * rd["chunk_bytes"]  # each turn rewrites its last chunk, about one chunk
    drafts_per_s = turns_per_s * (args.answer_tokens / replica_rate * 16)  # one per second of each streaming answer
    pg_commits = turns_per_s * 2 + drafts_per_s
    gb, mb = 1e9, 1e6
    print(f"model: {name}; machine: {cpu_summary()}")
    print(f"measured: KV {token_bytes} bytes/token (float16); one replica {replica_rate:.0f} tok/s with 16 streams "
          f"({node_file.name}); PostgreSQL {pg['turn_commit_ms_median']:.1f} ms per turn's commits (median), "
          f"{pg['turns_per_s']:.0f} turns/s with {pg['writers']} writers on 2 vCPUs; Redis {rd['write_mb_per_s']:.0f} MB/s "
          f"written, {rd['read_mb_per_s']:.0f} MB/s read (256-token chunks of {rd['chunk_bytes'] / mb:.1f} MB)\n")
    print(f"workload: {args.sessions:,} stored sessions, {args.active:,} active (a turn every {args.turn_every_s:.0f} s, "
          f"{args.answer_tokens}-token answers), {args.tokens:,}-token conversations, {args.warm_sessions:,} kept warm "
          f"in Redis, headroom {args.headroom}x\n")
    print("| resource | need | from |")
    print("|---|---:|---|")
    print(f"| decode | {decode_demand:,.0f} tok/s | {turns_per_s:,.0f} turns/s x {args.answer_tokens} tokens |")
    print(f"| replicas (this machine's kind) | **{replicas}** | x{args.headroom} / {replica_rate:.0f} tok/s each |")
    print(f"| KV RAM per replica | {ram_per_replica / gb:.1f} GB | {args.active / replicas:,.0f} active sessions x "
          f"{conv_bytes / mb:.0f} MB |")
    print(f"| Redis memory (maxmemory) | {redis_bytes / gb:,.0f} GB | {args.warm_sessions:,} x {conv_bytes / mb:.0f} MB |")
    print(f"| Redis writes | {redis_write / mb:,.0f} MB/s ({redis_write / rd['write_mb_per_s'] / mb * 100:.0f}% of "
          f"one measured instance) | a chunk per turn |")
    print(f"| local disk, all replicas | {disk_bytes / 1e12:,.1f} TB | {args.sessions:,} x {conv_bytes / mb:.0f} MB "
          "(sessions idle for --kv-ttl-hours go) |")
    print(f"| PostgreSQL commits | {pg_commits:,.0f} /s ({pg_commits / (2 * pg['turns_per_s']) * 100:.0f}% of the "
          f"{2 * pg['turns_per_s']:.0f}/s measured here) | 2 per turn ({turns_per_s * 2:,.0f}/s) + a draft per second "
          f"of each streaming answer ({drafts_per_s:,.0f}/s) |")
    out = ROOT / "bench" / "results" / f"sizing-{name}-{cpu_tag()}.json"
    out.write_text(json.dumps({"model": name, "cpu": cpu_summary(), "args": vars(args) | {"model_cache": str(args.model_cache),
                                                                                            "models_dir": str(args.models_dir)},
                               "token_bytes": token_bytes, "replica_tok_per_s": replica_rate, "postgres": pg,
                               "redis": rd, "replicas": replicas}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
