"""Every typed application key, in one place. The types are for type checkers only (imported under
TYPE_CHECKING), so that any module may import these keys without import cycles."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import weakref

    from chatserver.chat import ChatService, LiveSessions
    from chatserver.config import ServerConfig
    from chatserver.engine_client import EngineClient
    from chatserver.ops import ConnectionGate, Metrics
    from engine import LoadedModel
    from storage import KVFileStore, KVTiers, TranscriptStore

config: web.AppKey[ServerConfig] = web.AppKey("config")
model: web.AppKey[LoadedModel] = web.AppKey("model")
engine: web.AppKey[EngineClient] = web.AppKey("engine")
transcripts: web.AppKey[TranscriptStore] = web.AppKey("transcripts")
kv_files: web.AppKey[KVFileStore | KVTiers] = web.AppKey("kv_files")  # KVTiers with a shared tier (--redis-url)
sessions: web.AppKey[LiveSessions] = web.AppKey("sessions")
chat: web.AppKey[ChatService] = web.AppKey("chat")
websockets: web.AppKey[weakref.WeakSet] = web.AppKey("websockets")  # open chat.websocket.Connection objects
connection_gate: web.AppKey[ConnectionGate] = web.AppKey("connection_gate")
metrics: web.AppKey[Metrics] = web.AppKey("metrics")
started_at: web.AppKey[int] = web.AppKey("started_at")  # unix seconds: "created" of the model card
