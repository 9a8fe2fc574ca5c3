"""Typed errors for requests the engine refuses. Raised before anything is queued."""


class EngineError(Exception):
    code = "engine_error"


class ContextTooLong(EngineError):
    code = "context_length_exceeded"


class Overloaded(EngineError):
    """The turn queue is full; retry later. Nothing was queued."""

    code = "overloaded"


class EngineStopped(EngineError):
    code = "unavailable"
