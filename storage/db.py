"""Async database engine: SQLite (aiosqlite) by default, with WAL and foreign keys on."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


def create_db_engine(url: str) -> AsyncEngine:
    db_engine = create_async_engine(url)
    if db_engine.dialect.name == "sqlite":
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
