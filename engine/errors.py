"""The engine's one error type. Raised before anything is queued (bad requests never reach the step
loop), or carried by an ErrorEvent when a running turn fails. `code` is the stable name clients see;
chatserver maps codes to WebSocket frames and HTTP statuses in one place (chatserver/errors.py)."""

from __future__ import annotations


class EngineError(Exception):
    code = "engine_error"


class ContextTooLong(EngineError):
    code = "context_length_exceeded"


class Overloaded(EngineError):
    """The turn would wait too long (or the queue is at its memory bound); nothing was queued.
    retry_after: seconds after which a retry is likely to be admitted."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class EngineStopped(EngineError):
    code = "unavailable"
