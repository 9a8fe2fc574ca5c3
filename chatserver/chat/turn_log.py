"""A turn's log: every event a turn of a stored session has streamed, numbered, so that any connection of
the session (a second tab, or the same client after a dropped socket) can be given exactly the frames it
has not seen. Documented in docs/PROTOCOL.md ("Resuming a turn")."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from chatserver.errors import BadRequest
from engine import DoneEvent, ErrorEvent, TurnEvent


def new_turn_id() -> str:
    return secrets.token_hex(8)


@dataclass(eq=False)
class TurnLog:
    """The events of one turn in the order they were streamed: seq i is events[i]. Tokens with text, then
    exactly one DoneEvent or ErrorEvent, which finishes the log. Event loop only."""

    turn_id: str
    content: str  # the user message the turn answers
    user_message_id: int | None = None  # its id in the conversation tree
    events: list[TurnEvent] = field(default_factory=list)
    is_answer_stored: bool = False  # the answer is in the stored transcript (set when the log finishes)
    answer_id: int | None = None  # the stored answer's id (set with is_answer_stored)
    answer_siblings: list[int] = field(default_factory=list)  # every answer to the question, oldest first
    replica: str | None = None  # the cluster replica running the turn (None: a single server)

    @property
    def last_seq(self) -> int:
        """seq of the last event streamed; -1 before the first."""
        return len(self.events) - 1

    @property
    def is_finished(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], (DoneEvent, ErrorEvent))

    def append(self, event: TurnEvent) -> int:
        """Log the next event; returns its seq."""
        assert not self.is_finished, "a finished turn streams nothing more"
        self.events.append(event)
        return len(self.events) - 1

    def after(self, seq: int) -> list[tuple[int, TurnEvent]]:
        """(seq, event) of every event after `seq`, in order (seq -1: all of them)."""
        return [(i, e) for i, e in enumerate(self.events[seq + 1:], start=seq + 1)]


def replay_start(log: TurnLog | None, last_turn_id: str | None, last_seq: int | None) -> int | None:
    """The seq from which a connection that (re)attaches must be sent `log`'s events, or None for none.

    last_turn_id/last_seq: the last frame the client holds (None: it names no turn). The client holds
    seq 0..last_seq of `log` when it names it: the rest follows (none if it has the whole finished turn).
    Otherwise a running turn is sent whole, and a finished one not at all (its answer is in the
    transcript; a turn id that is neither the running nor the last one names such an ended turn).
    Raises BadRequest when the client claims a seq beyond the last one streamed."""
    if log is None:
        return None
    if last_turn_id == log.turn_id:
        if last_seq > log.last_seq:
            raise BadRequest(f"last_seq.seq: {last_seq} is beyond the last frame ({log.last_seq}) of turn "
                             f"{log.turn_id}", param="last_seq")
        if log.is_finished and last_seq == log.last_seq:
            return None
        return last_seq + 1
    return None if log.is_finished else 0
