"""Storage configuration: the transcript database and the disk tier of KV. Field metadata (help, flag,
scale, unit, negate) is read by chatserver's command line and docs/CONFIG.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StorageConfig:
    database_url: str | None = field(default=None, metadata={
        "help": "SQLAlchemy async URL of the transcript database: sqlite+aiosqlite:///PATH, or "
                "postgresql+asyncpg://USER[:PASSWORD]@HOST:PORT/DB for a cluster's shared one (docs/OPERATIONS.md) "
                "(default: SQLite file DATA_DIR/chat.db)"})
    migrate: bool = field(default=True, metadata={
        "flag": "no-migrate", "negate": True, "help": "do not apply database migrations at start-up"})
    max_kv_disk_bytes: int = field(default=20 << 30, metadata={
        "flag": "max-kv-disk-mb", "scale": 1 << 20, "unit": "MB",
        "help": "disk for spilled KV files; least recently used files are deleted beyond it"})
    redis_url: str | None = field(default=None, metadata={
        "help": "a cluster's shared KV tier (redis://HOST:PORT/DB): every replica writes each session's KV "
                "there after every turn and reads KV it does not hold from it (default: none, a single server)"})

    def db_url(self, data_dir: Path) -> str:
        return self.database_url or sqlite_url(data_dir / "chat.db")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"
