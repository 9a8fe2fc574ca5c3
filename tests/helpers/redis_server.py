"""A Redis server for the tests of the shared KV tier: started once per test session by scripts/redis.sh
(Debian's redis-server, on loopback, installed by scripts/setup.sh --test); each test gets a clean database."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers.paths import REPO

SCRIPT = REPO / "scripts" / "redis.sh"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis server for this test session (64 MB, LRU eviction). Fails, never skips, when
    redis-server is missing."""
    with tempfile.TemporaryDirectory(prefix="test-redis-") as tmp:
        run = subprocess.run(["bash", str(SCRIPT), "start", tmp, "64"], capture_output=True, text=True)
        if run.returncode != 0:
            pytest.fail(f"could not start Redis: {run.stderr.strip()}")
        try:
            yield Path(tmp, "url").read_text().strip()
        finally:
            subprocess.run(["bash", str(SCRIPT), "stop", tmp], check=False)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server
