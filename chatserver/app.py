"""Builds the aiohttp application: the wiring of engine, storage and transports. Lifetimes of the
database and of the engine live in cleanup_ctx; on shutdown running turns are cancelled and stored, then
open WebSockets are closed (GOING_AWAY)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import replace
from typing import AsyncIterator

from aiohttp import web

from chatserver import keys, routes
from chatserver.chat import ChatService, LiveSessions, Ownership, close_all
from chatserver.config import ServerConfig
from chatserver.engine_client import EngineClient
from chatserver.ops import ConnectionGate, Metrics, TurnRate
from engine import KVSpec, LoadedModel, start_engine
from storage import (AdvisoryLocks, KVFileStore, KVLayout, KVTiers, Leases, RedisKVStore, StorageUnavailable,
                     TranscriptStore, create_db_engine, db_sessionmaker, upgrade)

log = logging.getLogger(__name__)


def create_app(config: ServerConfig, model: LoadedModel | None = None) -> web.Application:
    """`model`: an already loaded model (tests); otherwise config.engine.model is loaded at start-up."""
    if config.storage.redis_url and not config.engine.kv.write_through:  # a cluster: KV written behind every turn
        config = replace(config, engine=replace(config.engine, kv=replace(config.engine.kv, write_through=True)))
    app = web.Application()
    app[keys.config] = config
    app[keys.websockets] = weakref.WeakSet()
    http = config.http
    app[keys.connection_gate] = ConnectionGate(http.max_connections, http.max_connections_per_client,
                                               http.trusted_proxies)
    app[keys.metrics] = Metrics()
    app[keys.started_at] = int(time.time())

    async def engine(app: web.Application) -> AsyncIterator[None]:
        def disk_for(spec: KVSpec) -> KVFileStore | KVTiers:
            layout = KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype, spec.fingerprint)
            local = KVFileStore(config.kv_dir, layout, config.storage.max_kv_disk_bytes)
            if config.storage.redis_url:
                shared = RedisKVStore(config.storage.redis_url, layout, config.engine.kv.ttl_seconds)
                app[keys.kv_files] = KVTiers(local, shared)
            else:
                app[keys.kv_files] = local
            return app[keys.kv_files]

        # blocking (model load, weight packing, kernel build, warm-up passes): off the event loop
        started, loaded = await asyncio.to_thread(start_engine, config.engine, model, config.model_cache_dir, disk_for)
        app[keys.engine] = EngineClient(started)
        app[keys.model] = loaded
        yield
        await asyncio.to_thread(started.stop)

    async def database(app: web.Application) -> AsyncIterator[None]:
        """After the engine: a model that cannot be loaded leaves no database behind."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if config.storage.migrate:
            await asyncio.to_thread(upgrade, config.db_url)
        db_engine = create_db_engine(config.db_url)
        app[keys.transcripts] = TranscriptStore(db_sessionmaker(db_engine))
        try:  # a turn the server was killed during left its user message unanswered (a cluster's replica
            # closes those of each session it takes instead: others' turns run on: chat/sessions.py)
            if not config.chat.replica_name:
                await app[keys.transcripts].close_unanswered("interrupted")
        except StorageUnavailable as exc:
            log.warning("could not mark interrupted turns: %s", exc)
        client, loaded = app[keys.engine], app[keys.model]
        on_idle = (lambda sid: client.spill_soon(sid, "disconnect")) if config.engine.kv.spill_on_disconnect else None
        ownership = None
        if config.chat.replica_name:  # a cluster: one replica serves a session at a time (docs/SCALING.md)
            locks = AdvisoryLocks(db_engine) if db_engine.dialect.name == "postgresql" else None
            ownership = Ownership(Leases(db_sessionmaker(db_engine), config.chat.replica_name,
                                         config.chat.lease_seconds, locks))
        sessions = app[keys.sessions] = LiveSessions(app[keys.transcripts], loaded.name, on_idle,
                                                     config.chat.detached_turn_seconds, ownership)
        app[keys.chat] = ChatService(config.chat, client, client.engine.chat_format, app[keys.transcripts], sessions,
                                     TurnRate(config.chat.turns_per_minute), config.engine.max_new_tokens)
        yield
        if ownership is not None:  # after the turns ended (close_all): other replicas may take them at once
            await ownership.stop()
        await db_engine.dispose()

    app.cleanup_ctx.append(engine)
    app.cleanup_ctx.append(database)
    app.on_shutdown.append(close_all)
    routes.setup(app)
    return app
