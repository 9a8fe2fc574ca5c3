"""Builds the aiohttp application; lifetimes of database, model and engine in cleanup_ctx."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from typing import AsyncIterator

from aiohttp import web

from chatserver import keys, routes
from chatserver.config import ServerConfig
from chatserver.ops.limits import ConnectionGate, TurnRate
from chatserver.ops.metrics import Metrics
from chatserver.chat.sessions import SessionManager
from chatserver.chat.service import TurnService
from chatserver.chat.websocket import close_all, turn_service_key
from engine.model.chat_format import ChatFormat
from engine.engine import Engine
from engine.kv.session_kv import KV_DTYPES
from engine.model.loader import LoadedModel, load_model
from engine.model.runner import ModelRunner
from engine.model.weights import MATMUL_DTYPES
from storage import migrations
from storage.db import create_engine, sessionmaker
from storage.kv_files import KVFileStore, KVLayout
from storage.transcripts import SessionRepository

log = logging.getLogger(__name__)


def create_app(config: ServerConfig, model: LoadedModel | None = None) -> web.Application:
    """`model`: an already loaded model (tests); otherwise config.model is loaded at start-up."""
    app = web.Application()
    app[keys.config] = config
    app[keys.websockets] = weakref.WeakSet()
    app[keys.connection_gate] = ConnectionGate(config.max_connections, config.max_connections_per_client)
    app[keys.turn_rate] = TurnRate(config.turns_per_minute)
    app[keys.metrics] = Metrics()
    app[keys.started_at] = int(time.time())

    async def database(app: web.Application) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if config.migrate:
            await asyncio.to_thread(migrations.upgrade, config.db_url)
        db = create_engine(config.db_url)
        app[keys.repository] = SessionRepository(sessionmaker(db))
        yield
        await db.dispose()

    async def model_and_engine(app: web.Application) -> AsyncIterator[None]:
        loaded = model or await asyncio.to_thread(load_model, config.model, config.model_cache_dir)
        app[keys.model] = loaded
        # blocking (weight packing, grid codes, kernel build, throwaway passes): off the event loop
        runner = await asyncio.to_thread(ModelRunner, loaded.model, MATMUL_DTYPES[config.dtype],
                                         kv_dtype=KV_DTYPES[config.kv_dtype], activations=config.activations)
        await asyncio.to_thread(runner.warmup)
        chat_format = ChatFormat(loaded.tokenizer, loaded.model.generation_config)
        layout = KVLayout(runner.num_layers, runner.num_kv_heads, runner.head_dim, runner.kv_dtype,
                          _kv_fingerprint(loaded.fingerprint, config.dtype, config.activations))
        kv_files = await asyncio.to_thread(KVFileStore, config.kv_dir, layout, config.engine.kv.max_disk_bytes)
        app[keys.kv_files] = kv_files
        engine = Engine(runner, chat_format, config.engine, disk=kv_files)
        engine.start()
        app[keys.engine] = engine
        on_idle = (lambda sid: engine.spill(sid, "disconnect")) if config.engine.kv.spill_on_disconnect else None
        sessions = SessionManager(app[keys.repository], loaded.name, on_idle)
        app[keys.sessions] = sessions
        max_context = min(config.engine.max_context, runner.max_context, config.engine.kv.max_tokens_per_session)
        # one session at full context must fit in RAM on its own, or its turn could never start
        while max_context > 1 and runner.new_kv(0).bytes_for(max_context) > config.engine.kv.max_ram_bytes:
            max_context //= 2
        app[turn_service_key] = TurnService(config, engine, chat_format, app[keys.repository], sessions, max_context)
        yield
        await asyncio.to_thread(engine.stop)

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(model_and_engine)
    app.on_shutdown.append(close_all)
    routes.setup(app)
    return app


def _kv_fingerprint(model_fingerprint: str, dtype: str, activations: str) -> str:
    """KV computed with bf16 matmuls or int16 activations differs from float32 KV: a spill file is only
    reused by the same mode."""
    mode = dtype if activations == "float32" else f"{dtype}:{activations}"
    if mode == "float32":
        return model_fingerprint  # files written before --dtype existed stay valid
    return hashlib.sha256(f"{model_fingerprint}:{mode}".encode()).hexdigest()
