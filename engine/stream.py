"""Event-loop side of a turn: an async iterator of TurnEvents fed by the engine thread."""

from __future__ import annotations

import asyncio
from typing import Callable

from engine.turn import DoneEvent, ErrorEvent, TurnEvent


class TurnStream:
    def __init__(self, loop: asyncio.AbstractEventLoop, cancel: Callable[[int], None]):
        self._loop = loop
        self._queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self._cancel = cancel
        self.turn_id = 0
        self.is_finished = False

    def push(self, event: TurnEvent) -> None:
        """Engine thread -> event loop. Safe to call from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass  # loop closed: nobody is listening any more

    def cancel(self) -> None:
        """Ask the engine to stop this turn at its next step; a DoneEvent("cancelled") follows."""
        if not self.is_finished:
            self._cancel(self.turn_id)

    def __aiter__(self):
        return self

    async def __anext__(self) -> TurnEvent:
        if self.is_finished:
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, (DoneEvent, ErrorEvent)):
            self.is_finished = True
        return event
