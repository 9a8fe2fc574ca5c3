"""python -m chatserver {serve, chat, db upgrade, config-doc}.

`serve` options are derived from ServerConfig (chatserver/options.py, docs/CONFIG.md); each has a
CHATSERVER_* variable, and the command line wins. `chat` is the terminal client: it imports only the
`websockets` client, never the engine (torch, transformers).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path


def build_parser(serve_options: bool = True) -> argparse.ArgumentParser:
    """serve_options=False leaves out `serve`'s options, which import the engine's configuration."""
    parser = argparse.ArgumentParser(prog="python -m chatserver", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the chat server (options: docs/CONFIG.md)")
    if serve_options:
        from chatserver.options import add_arguments

        add_arguments(serve)
    sub.add_parser("config-doc", help="print docs/CONFIG.md, generated from the server's configuration")

    chat = sub.add_parser("chat", help="terminal chat client")
    chat.add_argument("--url", default=os.environ.get("CHATSERVER_URL", "ws://127.0.0.1:8080/ws"))
    chat.add_argument("--session", help="session id to resume")
    chat.add_argument("--token", help="resume token of that session (may begin with '-')")
    chat.add_argument("--system", help="system prompt for a new session")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations up to head")
    up.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CHATSERVER_DATA_DIR", ".data")))
    up.add_argument("--database-url", default=os.environ.get("CHATSERVER_DATABASE_URL"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = _join_option_values(list(sys.argv[1:] if argv is None else argv), ("--token", "--session"))
    try:
        args = build_parser(serve_options=argv[:1] == ["serve"]).parse_args(argv)
        if args.command == "serve":
            from chatserver.options import config_from_args

            return _serve(config_from_args(args))
    except ValueError as exc:  # a bad option value (from the command line or the environment)
        print(f"chatserver: {exc}", file=sys.stderr)
        return 2
    if args.command == "chat":
        from chatserver.client import run_chat

        return asyncio.run(run_chat(args))
    if args.command == "config-doc":
        from chatserver.options import render_doc

        print(render_doc(), end="")
        return 0
    if args.command == "db":
        from storage import StorageConfig, upgrade

        args.data_dir.mkdir(parents=True, exist_ok=True)
        url = StorageConfig(database_url=args.database_url).db_url(args.data_dir)
        upgrade(url)
        print(f"database at head: {url}")
        return 0
    return 2


def _join_option_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """`--token VALUE` -> `--token=VALUE`, so that a value beginning with '-' (1 resume token in 64) is
    taken as the value, not refused by argparse as an unknown option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _serve(config) -> int:
    from engine.kernels import bf16_matmul_supported

    if config.engine.model.dtype == "bfloat16" and not bf16_matmul_supported():
        print("chatserver: --dtype bfloat16 needs a CPU with AVX-512 BF16 (and a C compiler); without them bf16 "
              "matmuls go through torch, slower than the float32 default and not batch-invariant", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return asyncio.run(_run_server(config))


async def _run_server(config) -> int:
    from aiohttp import web

    from chatserver.app import create_app

    runner = web.AppRunner(create_app(config), handle_signals=False)
    await runner.setup()  # loads the model and migrates the database
    site = web.TCPSite(runner, config.http.host, config.http.port)
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
