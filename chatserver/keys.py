"""Every typed application key, in one place."""

from __future__ import annotations

import weakref

from aiohttp import web

from chatserver.config import ServerConfig
from chatserver.ops.limits import ConnectionGate, TurnRate
from chatserver.ops.metrics import Metrics
from chatserver.chat.sessions import SessionManager
from engine.engine import Engine
from engine.model.loader import LoadedModel
from storage.kv_files import KVFileStore
from storage.transcripts import SessionRepository

config = web.AppKey("config", ServerConfig)
model = web.AppKey("model", LoadedModel)
engine = web.AppKey("engine", Engine)
repository = web.AppKey("repository", SessionRepository)
kv_files = web.AppKey("kv_files", KVFileStore)
sessions = web.AppKey("sessions", SessionManager)
websockets = web.AppKey("websockets", weakref.WeakSet)
connection_gate = web.AppKey("connection_gate", ConnectionGate)
turn_rate = web.AppKey("turn_rate", TurnRate)
metrics = web.AppKey("metrics", Metrics)
started_at = web.AppKey("started_at", int)  # unix seconds: "created" of the model card
