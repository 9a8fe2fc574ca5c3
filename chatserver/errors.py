"""Errors a client can cause, with the code sent to it. The one place that maps them to frames."""

from __future__ import annotations

from engine.errors import EngineError


class ChatError(Exception):
    code = "internal_error"


class BadRequest(ChatError):
    code = "bad_request"


class Unauthorized(ChatError):
    code = "unauthorized"


class SessionNotFound(ChatError):
    code = "session_not_found"


class Busy(ChatError):
    code = "busy"


class StorageUnavailable(ChatError):
    """The database refused a write (disk full, locked, unwritable). Nothing was stored; retry later."""

    code = "storage_unavailable"


def error_frame(exc: Exception) -> dict:
    if isinstance(exc, (ChatError, EngineError)):
        return {"type": "error", "code": exc.code, "message": str(exc)}
    return {"type": "error", "code": "internal_error", "message": "internal error"}
