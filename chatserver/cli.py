"""python -m chatserver {serve,chat,db upgrade}. Options override CHATSERVER_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from engine.config import EngineConfig
from engine.kv.session_kv import KV_DTYPES
from engine.kv.store import KVStoreConfig
from engine.kernels.grid import ACTIVATIONS
from engine.model.weights import MATMUL_DTYPES


def _env(name: str, default=None):
    return os.environ.get(f"CHATSERVER_{name}", default)


def _int_env(name: str, default: int) -> int:
    return int(_env(name, default))


# serve options with a fixed set of values; argparse checks a value given on the command line, not an
# environment default, so main() checks those
_CHOICES = {"dtype": sorted(MATMUL_DTYPES), "kv_dtype": sorted(KV_DTYPES), "activations": list(ACTIVATIONS)}


def build_parser() -> argparse.ArgumentParser:
    from chatserver.config import ServerConfig

    parser = argparse.ArgumentParser(prog="python -m chatserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the chat server")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=_int_env("PORT", 8080), help="0 picks a free port")
    serve.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", ".data")))
    serve.add_argument("--model", default=_env("MODEL"), help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--model-cache", type=Path, default=_env("MODEL_CACHE"), help="converted weights (default: DATA_DIR/models)")
    serve.add_argument("--dtype", choices=_CHOICES["dtype"], default=_env("DTYPE", "float32"),
                       help="weights of the linear layers: float32 (answers equal transformers'; the default "
                            "model's are read from their exact Q4_1/Q8_0 codes) or bfloat16 (CPUs with AVX-512 "
                            "BF16 only; 53/60 greedy answers equal float32's, docs/BENCHMARKS.md)")
    serve.add_argument("--kv-dtype", choices=_CHOICES["kv_dtype"], default=_env("KV_DTYPE", "float16"),
                       help="KV caches in RAM and on disk: float16 (half the memory, 60/60 greedy answers equal "
                            "float32's, docs/BENCHMARKS.md) or float32 (answers equal transformers')")
    serve.add_argument("--activations", choices=_CHOICES["activations"], default=_env("ACTIVATIONS", "int16"),
                       help="inputs of the matmuls on the default model's Q4_1/Q8_0 codes: int16 per block of 32 "
                            "(integer dot products: decode steps 1.1-1.3x faster, prefill the same; 60/60 greedy answers "
                            "equal float32's, docs/BENCHMARKS.md) or float32 (with --kv-dtype float32: answers equal "
                            "transformers')")
    serve.add_argument("--database-url", default=_env("DATABASE_URL"), help="SQLAlchemy async URL (default: SQLite in DATA_DIR)")
    serve.add_argument("--no-migrate", action="store_true", default=_env("NO_MIGRATE") == "1",
                       help="do not apply database migrations at start-up")
    serve.add_argument("--system-prompt", default=_env("SYSTEM_PROMPT"))
    serve.add_argument("--admin-token", default=_env("ADMIN_TOKEN"),
                       help="bearer token for the /api admin endpoints (without one they are disabled)")
    serve.add_argument("--api-key", default=_env("API_KEY"),
                       help="bearer token required by the OpenAI-compatible /v1 endpoints (default: none required)")
    serve.add_argument("--max-context", type=int, default=_int_env("MAX_CONTEXT", EngineConfig.max_context))
    serve.add_argument("--max-new-tokens", type=int, default=_int_env("MAX_NEW_TOKENS", EngineConfig.max_new_tokens))
    serve.add_argument("--max-queue", type=int, default=_int_env("MAX_QUEUE", EngineConfig.max_queue))
    serve.add_argument("--max-batch-size", type=int, default=_int_env("MAX_BATCH_SIZE", EngineConfig.max_batch_size))
    serve.add_argument("--max-tokens-per-decode-step", type=int,
                       default=_int_env("MAX_TOKENS_PER_DECODE_STEP", EngineConfig.max_tokens_per_decode_step),
                       help="at most this many tokens per forward pass while turns stream")
    serve.add_argument("--target-step-ms", type=float, default=float(_env("TARGET_STEP_MS", EngineConfig.target_step_ms)),
                       help="while turns stream, prefill chunks are sized to keep a forward pass within this time "
                            "(bounds inter-token latency)")
    kv = KVStoreConfig()
    serve.add_argument("--max-kv-ram-mb", type=int, default=_int_env("MAX_KV_RAM_MB", kv.max_ram_bytes >> 20))
    serve.add_argument("--max-kv-ram-sessions", type=int, default=_int_env("MAX_KV_RAM_SESSIONS", kv.max_ram_sessions))
    serve.add_argument("--max-kv-disk-mb", type=int, default=_int_env("MAX_KV_DISK_MB", kv.max_disk_bytes >> 20))
    serve.add_argument("--max-session-tokens", type=int, default=_int_env("MAX_SESSION_TOKENS", kv.max_tokens_per_session))
    serve.add_argument("--kv-ttl-hours", type=float, default=float(_env("KV_TTL_HOURS", kv.ttl_seconds / 3600)))
    serve.add_argument("--spill-on-disconnect", action="store_true", default=_env("SPILL_ON_DISCONNECT") == "1",
                       help="write a session's KV to disk and free its RAM as soon as its last client leaves "
                            "(default: only under RAM pressure and at shutdown)")
    serve.add_argument("--no-kv-reuse", action="store_true", default=_env("NO_KV_REUSE") == "1",
                       help="recompute every prompt from scratch (baseline for benchmarks)")
    limits = ServerConfig()
    serve.add_argument("--max-connections", type=int, default=_int_env("MAX_CONNECTIONS", limits.max_connections),
                       help="open WebSocket connections in total (beyond: handshake refused with 503)")
    serve.add_argument("--max-connections-per-client", type=int,
                       default=_int_env("MAX_CONNECTIONS_PER_CLIENT", limits.max_connections_per_client),
                       help="open WebSocket connections per client address (beyond: 429)")
    serve.add_argument("--turns-per-minute", type=int, default=_int_env("TURNS_PER_MINUTE", limits.turns_per_minute),
                       help="turns a session may start per minute (0: unlimited; beyond: error rate_limited)")
    serve.add_argument("--max-frame-bytes", type=int, default=_int_env("MAX_FRAME_BYTES", limits.max_frame_bytes),
                       help="largest WebSocket frame accepted (larger ones close the socket with 1009)")
    serve.add_argument("--ws-heartbeat", type=float, default=float(_env("WS_HEARTBEAT", limits.ws_heartbeat_s)),
                       help="seconds between pings; a client that does not answer is disconnected")
    serve.add_argument("--ws-idle-timeout", type=float, default=float(_env("WS_IDLE_TIMEOUT", limits.ws_idle_timeout_s)),
                       help="close a connection that sent nothing for this many seconds while no turn runs")
    serve.add_argument("--allowed-origin", action="append", default=[o for o in (_env("ALLOWED_ORIGINS") or "").split(",") if o],
                       help="extra browser origin allowed to open /ws (repeatable; default: same host only)")
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))

    chat = sub.add_parser("chat", help="terminal chat client")
    chat.add_argument("--url", default=_env("URL", "ws://127.0.0.1:8080/ws"))
    chat.add_argument("--session", help="session id to resume")
    chat.add_argument("--token", help="resume token of that session")
    chat.add_argument("--system", help="system prompt for a new session")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations up to head")
    up.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", ".data")))
    up.add_argument("--database-url", default=_env("DATABASE_URL"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        for name, choices in _CHOICES.items():
            if getattr(args, name) not in choices:
                print(f"chatserver: CHATSERVER_{name.upper()} must be one of {', '.join(choices)}, not "
                      f"{getattr(args, name)!r}", file=sys.stderr)
                return 2
        return _serve(args)
    if args.command == "chat":
        from chatserver.client import run_chat

        return asyncio.run(run_chat(args))
    if args.command == "db":
        from chatserver.config import ServerConfig
        from storage import migrations

        config = ServerConfig(data_dir=args.data_dir, database_url=args.database_url)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        migrations.upgrade(config.db_url)
        print(f"database at head: {config.db_url}")
        return 0
    return 2


def _serve(args: argparse.Namespace) -> int:
    import torch

    from chatserver.config import ServerConfig
    from engine.kernels.linear import native_kernel

    if args.dtype == "bfloat16" and native_kernel(torch.bfloat16) is None:
        print("chatserver: --dtype bfloat16 needs a CPU with AVX-512 BF16 (and a C compiler); without them bf16 "
              "matmuls go through torch, slower than the float32 default and not batch-invariant", file=sys.stderr)
        return 2

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    engine = replace(
        EngineConfig(), max_context=args.max_context, max_new_tokens=args.max_new_tokens, max_queue=args.max_queue,
        max_batch_size=args.max_batch_size, reuse_kv=not args.no_kv_reuse,
        max_tokens_per_decode_step=args.max_tokens_per_decode_step, target_step_ms=args.target_step_ms,
        kv=KVStoreConfig(
            max_ram_bytes=args.max_kv_ram_mb << 20, max_ram_sessions=args.max_kv_ram_sessions,
            max_disk_bytes=args.max_kv_disk_mb << 20, max_tokens_per_session=args.max_session_tokens,
            ttl_seconds=args.kv_ttl_hours * 3600, spill_on_disconnect=args.spill_on_disconnect,
        ),
    )
    config = ServerConfig(
        host=args.host, port=args.port, data_dir=args.data_dir, model=args.model, model_cache=args.model_cache, dtype=args.dtype,
        kv_dtype=args.kv_dtype, activations=args.activations,
        database_url=args.database_url, migrate=not args.no_migrate, system_prompt=args.system_prompt, engine=engine,
        admin_token=args.admin_token, api_key=args.api_key, max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client, turns_per_minute=args.turns_per_minute,
        max_frame_bytes=args.max_frame_bytes, ws_heartbeat_s=args.ws_heartbeat, ws_idle_timeout_s=args.ws_idle_timeout,
        allowed_origins=tuple(args.allowed_origin),
    )
    return asyncio.run(_run_server(config))


async def _run_server(config) -> int:
    from aiohttp import web

    from chatserver.app import create_app

    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()  # loads the model and migrates the database
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"chatserver ready on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("chatserver shutting down", file=sys.stderr, flush=True)
    await runner.cleanup()
    return 0
