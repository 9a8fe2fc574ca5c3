"""Errors a client can cause, and the one place that maps every layer's error codes to what a transport
sends: a WebSocket error frame, an HTTP status (and Retry-After).

Each layer has one error type carrying a stable `code`: engine.EngineError, storage.StorageError and
ChatError here (which also carries its HTTP status). Any other exception raised while handling a
request is a bug: `internal_error`, 500, "internal error" (details in the log). A turn that fails
inside the engine ends with the engine's ErrorEvent, whose code and message are sent as they are.
"""

from __future__ import annotations

import math

from engine import EngineError
from storage import StorageError


class ChatError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.param = param  # the request field at fault, when there is one
        self.retry_after = retry_after  # seconds, for errors a retry may cure


class BadRequest(ChatError):
    code, status = "bad_request", 400


class Unauthorized(ChatError):
    code, status = "unauthorized", 401


class Forbidden(ChatError):
    code, status = "forbidden", 403


class NotFound(ChatError):
    code, status = "not_found", 404


class SessionNotFound(NotFound):
    code = "session_not_found"


class MessageNotFound(NotFound):
    code = "message_not_found"  # no such message in this session (also when it is another session's)


class MethodNotAllowed(ChatError):
    code, status = "method_not_allowed", 405


class Busy(ChatError):
    code, status = "busy", 409


class SessionElsewhere(ChatError):
    """Another live replica of the cluster serves this session (docs/SCALING.md): connect through the
    balancer, which routes by session id, or retry once that replica has let the session go."""

    code, status = "session_elsewhere", 409

    def __init__(self, message: str, replica: str, retry_after: float | None = None):
        super().__init__(message, retry_after=retry_after)
        self.replica = replica


class RequestTooLarge(ChatError):
    code, status = "request_too_large", 413


class RateLimited(ChatError):
    """Too many turns in this session recently; nothing was stored."""

    code, status = "rate_limited", 429


# HTTP statuses of the other layers' codes
_STATUS = {
    "context_length_exceeded": 400,
    "overloaded": 429,
    "unavailable": 503,
    "storage_unavailable": 503,
    "session_moved": 409,  # storage.LeaseLost: another replica took the session
}


def code_of(exc: BaseException) -> str:
    if isinstance(exc, (ChatError, EngineError, StorageError)):
        return exc.code
    return "internal_error"


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ChatError):
        return exc.status
    return _STATUS.get(code_of(exc), 500)


def message_of(exc: BaseException) -> str:
    """What the client reads: the error's own message, never a bug's details."""
    return str(exc) if isinstance(exc, (ChatError, EngineError, StorageError)) else "internal error"


def retry_after_of(exc: BaseException) -> int | None:
    """Whole seconds for a Retry-After header, or None."""
    seconds = getattr(exc, "retry_after", None)
    return max(1, math.ceil(seconds)) if seconds is not None else None


def error_frame(exc: BaseException) -> dict:
    """The WebSocket frame of an error (docs/PROTOCOL.md)."""
    frame = {"type": "error", "code": code_of(exc), "message": message_of(exc)}
    if (seconds := retry_after_of(exc)) is not None:
        frame["retry_after"] = seconds
    if isinstance(exc, SessionElsewhere):
        frame["replica"] = exc.replica
    return frame


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"


class ModelNotFound(NotFound):
    code = "model_not_found"


def openai_error_body(exc: BaseException) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}} (docs/OPENAI.md)."""
    code, status = code_of(exc), status_of(exc)
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    param = getattr(exc, "param", None) or ("messages" if code == "context_length_exceeded" else None)
    return {"error": {"message": message_of(exc), "type": kind, "param": param,
                      "code": None if code == "bad_request" else code}}


def admin_error_body(exc: BaseException) -> dict:
    """The admin API's error shape: {"error": {"code", "message"}} (docs/ADMIN.md)."""
    return {"error": {"code": code_of(exc), "message": message_of(exc)}}
