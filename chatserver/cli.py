"""python -m chatserver {serve, chat, models list|pull|rm, db upgrade, config-doc}.

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

    models = sub.add_parser("models", help="the catalog of models known by name: list, pull, remove")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, help_text in (("list", "every known model, its size and whether it is here"),
                            ("pull", "download a model into DATA_DIR/models (checked against its SHA-256)"),
                            ("rm", "delete a pulled model")):
        command = models_sub.add_parser(name, help=help_text)
        if name != "list":
            command.add_argument("name", help="a model name (see `models list`)")
        command.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CHATSERVER_DATA_DIR", ".data")))
        command.add_argument("--model-cache", type=Path, default=os.environ.get("CHATSERVER_MODEL_CACHE"),
                             help="where models are kept (default: DATA_DIR/models)")
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
        from sqlalchemy.engine import make_url

        from storage import StorageConfig, upgrade

        args.data_dir.mkdir(parents=True, exist_ok=True)
        url = StorageConfig(database_url=args.database_url).db_url(args.data_dir)
        upgrade(url)
        print(f"database at head: {make_url(url).render_as_string(hide_password=True)}")
        return 0
    if args.command == "models":
        return _models(args)
    return 2


def _models(args: argparse.Namespace) -> int:
    from engine.model import ModelNotFound, list_models, pull, remove

    models_dir = Path(args.model_cache) if args.model_cache else args.data_dir / "models"
    try:
        if args.models_command == "list":
            rows = [("name", "arch", "size", "here", "path")] + [
                (s.entry.name, s.entry.architecture, f"{s.entry.size / 1e6:,.0f} MB", "yes" if s.is_present else "no",
                 str(s.path)) for s in list_models(models_dir)]
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                print("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[4]]))
        elif args.models_command == "pull":
            print(f"{args.name}: {pull(args.name, models_dir, _progress(args.name))}")
        else:
            removed = remove(args.name, models_dir)
            print(f"removed {removed}" if removed else f"{args.name} is not in {models_dir}; nothing removed")
    except ModelNotFound as exc:  # an unknown name, or a pull that failed (ModelFetchError)
        print(f"chatserver: {exc}", file=sys.stderr)
        return 1
    return 0


def _progress(name: str):
    """progress(done, total) in bytes: a bar on an interactive stderr, else a line per 10%."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bars: list[tqdm] = []  # made at the first report, which brings the total

        def draw(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(desc=f"pulling {name}", total=total, unit="B", unit_scale=True, file=sys.stderr))
            bars[0].update(done - bars[0].n)
            if done >= total:
                bars[0].close()

        return draw
    shown = [-1]  # the last tenth printed

    def print_tenths(done: int, total: int) -> None:
        if (tenth := 10 * done // max(total, 1)) > shown[0]:
            shown[0] = tenth
            print(f"pulling {name}: {10 * tenth}% of {total / 1e6:.0f} MB", file=sys.stderr, flush=True)

    return print_tenths


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
    from engine.model import ModelNotFound, is_catalog_name, pull, resolve_model

    model = config.engine.model.path
    try:
        if is_catalog_name(model):  # pulled once, on first use (it logs when it downloads)
            pull(model, config.model_cache_dir, _progress(model))
        resolve_model(model, config.model_cache_dir)  # an unknown name or a missing path: refused here
    except ModelNotFound as exc:
        print(f"chatserver: {exc}", file=sys.stderr)
        return 2
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
