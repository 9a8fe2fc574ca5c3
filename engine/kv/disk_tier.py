"""What the KV store needs from a disk tier (implemented by storage.kv_files.KVFileStore).

engine/ does not import storage/: chatserver/ hands the store an object with these methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class DiskTier(Protocol):
    """Blocking file store of KV (storage.kv_files.KVFileStore). Thread-safe; the store calls the
    I/O methods (write, read_into, delete, expire) only from its I/O thread."""

    def contains(self, key: str) -> bool: ...
    def nbytes(self, key: str) -> int: ...
    def write(self, key: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int: ...
    def read_into(self, key: str, allocate: Callable[[int], torch.Tensor]) -> tuple[torch.Tensor, list[int]]: ...
    def delete(self, key: str) -> bool: ...
    def rename(self, key: str, new_key: str) -> bool: ...
    def expire(self, max_age_seconds: float) -> int: ...
