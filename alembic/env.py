"""Alembic environment (async template): runs migrations over the configured async URL, SQLite or
PostgreSQL."""

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from storage.db import create_db_engine
from storage.tables import Base

config = context.config
target_metadata = Base.metadata
# PostgreSQL advisory lock key held by the migrating transaction: servers starting at once against one
# database migrate it one after the other (the later ones find it at head)
MIGRATION_LOCK_KEY = 0x63686174  # "chat"


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"}, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        # batch migrations rebuild a table by copy, drop and rename; with foreign keys on, dropping the old
        # `sessions` table would cascade to every message (the pragma is a no-op inside a transaction, so
        # it comes first)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # end the transaction the statement began, so that alembic's commits
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # DDL is transactional there: one transaction, then unlocked
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


async def run_async_migrations() -> None:
    db_engine = create_db_engine(config.get_main_option("sqlalchemy.url"))
    async with db_engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await db_engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
