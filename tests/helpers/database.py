"""The database a test runs on, from one place: SQLite in the test's tmp_path, or, when TEST_DATABASE_URL
names a PostgreSQL database (scripts/test.sh sets it to a throwaway server's, scripts/postgres.sh), a
new empty database on that server, created for the test (about 50 ms) and dropped once it is over (when
the next test's is made, or at the end of the run)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading
from pathlib import Path

import asyncpg
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from storage import create_db_engine, sqlite_url
from tests.helpers.paths import REPO

ENV = "TEST_DATABASE_URL"
SERVER_DIR_ENV = "TEST_POSTGRES_DIR"  # the directory of TEST_DATABASE_URL's server (scripts/postgres.sh)
_created: list[str] = []  # names of the PostgreSQL databases made and not yet dropped


def backend() -> str:
    """The dialect the tests run on: "sqlite" or "postgresql"."""
    server = os.environ.get(ENV)
    return make_url(server).get_backend_name() if server else "sqlite"


def fresh_database(tmp_path: Path) -> str:
    """The SQLAlchemy async URL of an empty database, for one test. A PostgreSQL one lasts until the next
    test's is made (its app, closed by then, may still write while shutting down) or drop_test_databases."""
    server = os.environ.get(ENV)
    if not server:
        return sqlite_url(tmp_path / "chat.db")
    url = make_url(server)
    if url.get_backend_name() != "postgresql":
        raise RuntimeError(f"{ENV} must be a postgresql+asyncpg URL, not {url.drivername}")
    name = f"test_{secrets.token_hex(6)}"
    drop_test_databases()
    _in_thread(_admin(server, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    _created.append(name)
    return url.set(database=name).render_as_string(hide_password=False)


def drop_test_databases() -> None:
    """Drops the PostgreSQL databases fresh_database made (ending connections still open to them)."""
    while _created:
        _in_thread(_admin(os.environ[ENV], f'DROP DATABASE IF EXISTS "{_created[-1]}" WITH (FORCE)'))
        _created.pop()


def stop_postgres() -> None:
    """Stops the PostgreSQL server of TEST_DATABASE_URL (start_postgres starts it again)."""
    _postgres_sh("stop")


def start_postgres() -> None:
    _postgres_sh("start")


def _postgres_sh(action: str) -> None:
    if not os.environ.get(SERVER_DIR_ENV):
        raise RuntimeError(f"{SERVER_DIR_ENV} must name the server's directory (scripts/test_postgres.sh sets it)")
    subprocess.run([str(REPO / "scripts" / "postgres.sh"), action, os.environ[SERVER_DIR_ENV]], check=True,
                   stdout=subprocess.DEVNULL)


def sql(url: str, statement: str, **params) -> list[tuple]:
    """Run one SQL statement (named :params) in its own transaction on the database at `url`; its rows
    (none for a statement that returns none). Blocking, from sync or async code alike."""

    async def run() -> list[tuple]:
        db_engine = create_db_engine(url)
        try:
            async with db_engine.begin() as connection:
                result = await connection.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            await db_engine.dispose()

    return _in_thread(run())


def table_names(url: str) -> set[str]:
    """The tables of the database at `url`."""

    async def run() -> set[str]:
        db_engine = create_db_engine(url)
        try:
            async with db_engine.connect() as connection:
                return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await db_engine.dispose()

    return _in_thread(run())


async def _admin(server: str, statement: str) -> None:
    """On the server's own database (TEST_DATABASE_URL's), through asyncpg alone."""
    dsn = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _in_thread(coroutine):
    """Runs the coroutine to its end on an event loop of its own (the caller's loop, if any, waits)."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")
