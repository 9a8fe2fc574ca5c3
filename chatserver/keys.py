"""Every typed application key, in one place."""

from __future__ import annotations

import weakref

from aiohttp import web

from chatserver.chat.service import ChatService
from chatserver.chat.sessions import LiveSessions
from chatserver.config import ServerConfig
from chatserver.engine_client import EngineClient
from chatserver.ops.limits import ConnectionGate
from chatserver.ops.metrics import Metrics
from engine import LoadedModel
from storage import KVFileStore, TranscriptStore

config = web.AppKey("config", ServerConfig)
model = web.AppKey("model", LoadedModel)
engine = web.AppKey("engine", EngineClient)
transcripts = web.AppKey("transcripts", TranscriptStore)
kv_files = web.AppKey("kv_files", KVFileStore)
sessions = web.AppKey("sessions", LiveSessions)
chat = web.AppKey("chat", ChatService)
websockets = web.AppKey("websockets", weakref.WeakSet)
connection_gate = web.AppKey("connection_gate", ConnectionGate)
metrics = web.AppKey("metrics", Metrics)
started_at = web.AppKey("started_at", int)  # unix seconds: "created" of the model card
