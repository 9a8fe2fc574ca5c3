"""Event-loop side of a turn: an async iterator of TurnEvents fed by the engine thread."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from engine.turn import DoneEvent, ErrorEvent, TurnEvent

if TYPE_CHECKING:
    from engine.turn import TurnRequest


class TurnStream:
    """Created by Engine.admit(); holds one admitted place until the turn ends or is abandoned."""

    def __init__(self, loop: asyncio.AbstractEventLoop, enqueue: Callable, cancel: Callable[[int], None],
                 release: Callable[[], None]):
        self._loop = loop
        self._queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
        self._enqueue, self._cancel, self._release = enqueue, cancel, release
        self.turn_id = 0
        self.is_finished = False

    def start(self, request: TurnRequest) -> None:
        assert not self.turn_id, "a stream runs one turn"
        self.turn_id = self._enqueue(self, request)

    def abandon(self) -> None:
        """Give the admitted place back without running a turn."""
        assert not self.turn_id and not self.is_finished
        self.is_finished = True
        self._release()

    def push(self, event: TurnEvent) -> None:
        """Engine thread -> event loop. Safe to call from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            pass  # loop closed: nobody is listening any more

    def cancel(self) -> None:
        """Ask the engine to stop this turn at its next step; a DoneEvent("cancelled") follows."""
        if self.turn_id and not self.is_finished:
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
