"""What the KV store needs from a disk tier, and what the tier's files must match.

engine/ does not import storage/: chatserver/ builds storage.kv_files.KVFileStore for the engine's
KVSpec and hands it to the engine as a DiskTier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class KVSpec:
    """The KV of one engine: [num_layers, 2, num_kv_heads, tokens, head_dim] of dtype, computed by the
    model and numeric modes that `fingerprint` names. Only KV of the same spec may be reused."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    fingerprint: str


class DiskTier(Protocol):
    """Blocking store of KV below RAM, keyed by session id: a replica's local disk (storage.KVFileStore), and
    in a cluster also the shared tier every replica reads (storage.KVTiers). Thread-safe; the store calls
    the I/O methods (write, restore_into, delete, expire) only from its I/O thread."""

    max_bytes: int  # the tier's bound; least recently used sessions go beyond it
    num_sessions: int
    num_chunks: int  # files of KV, each held once however many sessions share it
    total_bytes: int
    stats: Any  # a dataclass of counters, reported as is in the engine's statistics
    shared_stats: Any  # the shared tier's counters (a dataclass), None without one

    def contains(self, session_id: str) -> bool: ...
    def nbytes(self, session_id: str) -> int: ...  # the session's KV in RAM terms: a bound of its tokens x bytes per token
    def scan_prefixes(self) -> list[tuple[str, list[int]]]: ...  # (session id, token ids) of every file
    def write(self, session_id: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int: ...
    def restore_into(self, session_id: str, allocate: Callable[[int], torch.Tensor]
                     ) -> tuple[torch.Tensor, list[int], str]: ...  # (KV, its token ids, "disk" | "shared")
    def delete(self, session_id: str) -> bool: ...
    def rename(self, session_id: str, new_id: str) -> bool: ...
    def expire(self, max_age_seconds: float) -> int: ...
