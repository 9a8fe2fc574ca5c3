"""The event loop's side of the engine: the asyncio bridge to its thread-safe interface.

A turn's events arrive on the engine thread and are handed to the loop with call_soon_threadsafe;
queries and KV operations return concurrent futures, awaited here with asyncio.wrap_future. Nothing
of the engine's state is read from the event loop except through these calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from engine import DoneEvent, Engine, ErrorEvent, Ticket, TurnEvent, TurnRequest

T = TypeVar("T")


class TurnStream:
    """One admitted turn, as an async iterator of its events ending with a DoneEvent or ErrorEvent.
    Created by EngineClient.admit(); the caller must then start(request) or abandon()."""

    def __init__(self, engine: Engine, ticket: Ticket, loop: asyncio.AbstractEventLoop):
        self._engine, self._ticket, self._loop = engine, ticket, loop
        self._queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self.turn_id = 0
        self.is_finished = False

    def start(self, request: TurnRequest) -> None:
        assert not self.turn_id and not self.is_finished, "a stream runs one turn"
        self.turn_id = self._engine.submit(request, self._ticket, self._push)

    def abandon(self) -> None:
        """Give the admitted place back without running a turn."""
        assert not self.turn_id and not self.is_finished
        self.is_finished = True
        self._engine.release(self._ticket)

    def cancel(self) -> None:
        """Ask the engine to stop this turn at its next step; a DoneEvent("cancelled") follows."""
        if self.turn_id and not self.is_finished:
            self._engine.cancel(self.turn_id)

    def _push(self, event: TurnEvent) -> None:
        """Engine thread -> event loop."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass  # loop closed: nobody is listening any more

    def __aiter__(self):
        return self

    async def __anext__(self) -> TurnEvent:
        if self.is_finished:
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, (DoneEvent, ErrorEvent)):
            self.is_finished = True
        return event


class EngineClient:
    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def is_alive(self, stall_seconds: float) -> bool:
        """The engine thread runs and its loop went round within stall_seconds."""
        return self.engine.is_alive and time.monotonic() - self.engine.heartbeat < stall_seconds

    def admit(self, prompt_ids: list[int], max_tokens: int) -> TurnStream:
        """A stream for one turn; raises Overloaded (its predicted wait is too long) or EngineStopped."""
        ticket = self.engine.admit(prompt_ids, max_tokens)
        return TurnStream(self.engine, ticket, asyncio.get_running_loop())

    async def query(self, fn: Callable[[Engine], T]) -> T:
        """fn(engine) run on the engine thread between steps."""
        return await asyncio.wrap_future(self.engine.query(fn))

    async def stats(self, with_buckets: bool = False) -> dict:
        return await self.query(lambda engine: engine.stats_snapshot(with_buckets))

    async def kv_placement(self, session_ids: list[str]) -> dict[str, tuple[str, int]]:
        return await self.query(lambda engine: engine.kv_placement(session_ids))

    async def spill(self, session_id: str, cause: str = "admin") -> str:
        """Write the session's KV to disk and free its RAM; returns its tier once done."""
        return await asyncio.wrap_future(self.engine.spill(session_id, cause))

    async def drop(self, session_id: str) -> str:
        """Forget the session's KV in every tier; returns once it is gone."""
        return await asyncio.wrap_future(self.engine.drop(session_id))

    async def switch_branch(self, session_id: str, holds: str, continues: str) -> str:
        """Engine.switch_branch: returns the branch the session's KV holds then."""
        return await asyncio.wrap_future(self.engine.switch_branch(session_id, holds, continues))

    def spill_soon(self, session_id: str, cause: str) -> None:
        """spill() without waiting (a client left)."""
        self.engine.spill(session_id, cause)

    def prefetch(self, session_id: str) -> None:
        self.engine.prefetch(session_id)
