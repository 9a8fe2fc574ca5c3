"""Storage's one error type: `code` is the stable name clients see (chatserver/errors.py maps it)."""

from __future__ import annotations


class StorageError(Exception):
    code = "storage_error"


class StorageUnavailable(StorageError):
    """The database refused a read or write (disk full, locked, unreachable). Nothing was stored; retry later."""

    code = "storage_unavailable"


class KVFileInvalid(StorageError):
    """A KV file that must not be used (the engine recomputes from the transcript instead). `reason` is
    one of: missing, truncated, corrupt, format_version, model_mismatch, layout_mismatch."""

    code = "kv_file_invalid"

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.chunk: str | None = None  # the chunk at fault, if one is (storage/kv_format.py)
