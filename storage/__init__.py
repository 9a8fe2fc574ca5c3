"""Storage: chat sessions and transcripts (conversation trees) in SQL (SQLAlchemy async, SQLite by default, alembic
migrations) and the disk tier of session KV (verified chunks named by their content, shared by the sessions
that hold them). Imports neither the engine nor the server."""

from storage.config import StorageConfig, sqlite_url
from storage.conversation import Conversation, StoredMessage
from storage.db import create_db_engine, db_sessionmaker
from storage.errors import KVFileInvalid, StorageError, StorageUnavailable
from storage.kv_files import KVFileStats, KVFileStore
from storage.kv_format import KVLayout, chunk_names
from storage.kv_redis import RedisKVStore, RedisUnavailable, SharedTierStats
from storage.kv_tiers import KVTiers
from storage.fencing import Lease, LeaseLost
from storage.leases import AdvisoryLocks, Held, Leases
from storage.migrations import upgrade
from storage.transcripts import SessionRecord, TranscriptStore

__all__ = ["AdvisoryLocks", "Conversation", "Held", "Lease", "LeaseLost", "Leases", "KVFileInvalid", "KVFileStats", "KVFileStore", "KVLayout", "KVTiers", "RedisKVStore", "RedisUnavailable", "SessionRecord", "StorageConfig", "StorageError",
           "SharedTierStats", "StorageUnavailable", "StoredMessage", "TranscriptStore", "create_db_engine", "db_sessionmaker",
           "chunk_names", "sqlite_url", "upgrade"]
