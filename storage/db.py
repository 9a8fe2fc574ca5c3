"""Async database engine: SQLite (aiosqlite, the default) with WAL and foreign keys on, or PostgreSQL
(asyncpg: `postgresql+asyncpg://USER@HOST:PORT/DB`) through a bounded pool of checked connections."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

# PostgreSQL pool, per process: 10 kept + 10 burst connections (a server's turns each hold one for a
# few milliseconds per write); a request waits at most POOL_TIMEOUT_S for one, then the store reports
# the database unavailable. Connections are checked before use (a restarted server's dead ones are
# replaced, not handed out) and renewed after POOL_RECYCLE_S.
POOL_SIZE = 10
MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 10.0
POOL_RECYCLE_S = 1800
CONNECT_TIMEOUT_S = 10.0


def create_db_engine(url: str) -> AsyncEngine:
    """An engine for a SQLAlchemy async URL: sqlite+aiosqlite or postgresql+asyncpg (others as
    SQLAlchemy's defaults make them)."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return create_async_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                                   pool_timeout=POOL_TIMEOUT_S, pool_recycle=POOL_RECYCLE_S,
                                   connect_args={"timeout": CONNECT_TIMEOUT_S})
    db_engine = create_async_engine(url)
    if backend == "sqlite":
        event.listen(db_engine.sync_engine, "connect", _sqlite_pragmas)
    return db_engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def db_sessionmaker(db_engine: AsyncEngine) -> async_sessionmaker:
    """Database sessions (SQLAlchemy's unit of work; not chat sessions)."""
    return async_sessionmaker(db_engine, expire_on_commit=False)
