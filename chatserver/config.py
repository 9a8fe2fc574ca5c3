"""The server's one configuration, composed of its parts: HTTP, chat, engine (model, KV), storage.

Every leaf field is an option: chatserver/options.py derives the `serve` command line, the
CHATSERVER_* environment variables and docs/CONFIG.md from these dataclasses and their field metadata
(help; flag, when it is not the field name; choices; scale and unit, when the flag's unit is not
the field's; negate, for a --no-... flag). The command line wins over the environment, which wins
over these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine import EngineConfig, SamplingParams
from storage import StorageConfig


@dataclass(frozen=True)
class HttpConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on (0 picks a free one)"})
    admin_token: str | None = field(default=None, metadata={
        "help": "bearer token of the /api admin endpoints (without one they are disabled)"})
    api_key: str | None = field(default=None, metadata={
        "help": "bearer token required by the OpenAI-compatible /v1 endpoints (default: none required)"})
    allowed_origins: tuple[str, ...] = field(default=(), metadata={
        "flag": "allowed-origin", "env": "ALLOWED_ORIGINS",
        "help": "extra browser origin allowed to open /ws (repeatable; comma-separated in the environment; "
                "default: same host only)"})
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={
        "flag": "trusted-proxy", "env": "TRUSTED_PROXIES",
        "help": "address or network (CIDR) of a reverse proxy whose X-Forwarded-For names the client "
                "(repeatable; comma-separated in the environment); other peers' headers are ignored"})
    max_connections: int = field(default=1000, metadata={
        "help": "open WebSocket connections in total (beyond: handshake refused with 503)"})
    max_connections_per_client: int = field(default=256, metadata={
        "help": "open WebSocket connections per client address (beyond: 429)"})
    max_frame_bytes: int = field(default=1 << 20, metadata={
        "help": "largest WebSocket frame accepted (larger ones close the socket with 1009)"})
    ws_heartbeat_s: float = field(default=30.0, metadata={
        "flag": "ws-heartbeat", "unit": "s",
        "help": "seconds between pings; a client that does not answer within half of it is disconnected"})
    ws_idle_timeout_s: float = field(default=900.0, metadata={
        "flag": "ws-idle-timeout", "unit": "s",
        "help": "close a connection that sent nothing for this many seconds while no turn runs"})


@dataclass(frozen=True)
class ChatConfig:
    system_prompt: str | None = field(default=None, metadata={
        "help": "system prompt of conversations that bring none (default: the chat template's own)"})
    max_content_chars: int = field(default=100_000, metadata={"help": "longest message accepted, in characters"})
    turns_per_minute: int = field(default=30, metadata={
        "help": "turns a session may start per minute (0: unlimited; beyond: error rate_limited)"})
    detached_turn_seconds: float = field(default=120.0, metadata={
        "unit": "s",
        "help": "a turn goes on this long while no connection of its session is open (a client that comes back "
                "reads it, docs/PROTOCOL.md), then it is cancelled and stored as it stands; a finished turn's "
                "frames are kept as long after its session's last connection left"})
    draft_seconds: float = field(default=1.0, metadata={
        "unit": "s",
        "help": "while an answer streams, the text so far is written to the database this often (0: never); a "
                "server killed mid-answer (kill -9, power loss) keeps it as the answer, marked interrupted"})
    replica_name: str | None = field(default=None, metadata={
        "help": "this server's name in a cluster of replicas sharing one database (docs/SCALING.md): a session "
                "is served by one replica at a time, under a lease; the session and done frames name the replica "
                "(default: none, a single server that owns every session)"})
    lease_seconds: float = field(default=15.0, metadata={
        "unit": "s", "help": "a replica's lease of a session lasts this long, renewed every third of it while the "
                             "session is live; a silent replica's sessions become free when it runs out"})
    sampling: SamplingParams = field(default_factory=SamplingParams, metadata={
        "internal": True, "help": "defaults for the sampling fields a turn omits"})


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = field(default=Path(".data"), metadata={
        "help": "where the server keeps its data: chat.db (SQLite), kv/ (spilled KV), models/ (converted weights)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    http: HttpConfig = field(default_factory=HttpConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def db_url(self) -> str:
        return self.storage.db_url(self.data_dir)

    @property
    def kv_dir(self) -> Path:
        return self.data_dir / "kv"

    @property
    def model_cache_dir(self) -> Path:
        return self.engine.model.cache_dir or self.data_dir / "models"
