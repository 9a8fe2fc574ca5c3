"""Waiting for something the server does on its own time (a spill, a close noticed, a page update)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(condition: Callable[[], object | Awaitable[object]], timeout: float = 10.0,
                     interval: float = 0.02, what: str = "condition") -> object:
    """Poll `condition` (sync or async) until it returns a truthy value, which is returned; raises
    TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)


def wait_until_sync(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
                    what: str = "condition") -> object:
    """wait_until for code without an event loop (browser tests, subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
