"""Limits and policy of the KV store, and what it counts.

Field metadata (help, flag, scale, unit) is read by chatserver's command line and docs/CONFIG.md:
`scale` converts the flag's unit to the field's (MB -> bytes, hours -> seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KV_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # what a session's KV buffers hold

_MB = 1 << 20


@dataclass(frozen=True)
class KVStoreConfig:
    dtype: str = field(default="float16", metadata={
        "flag": "kv-dtype", "choices": tuple(KV_DTYPES),
        "help": "KV caches in RAM and on disk: float16 (half the memory; 60/60 greedy answers equal float32's, "
                "docs/PERFORMANCE.md) or float32 (with --activations float32: answers equal transformers')"})
    max_ram_bytes: int = field(default=4 << 30, metadata={
        "flag": "max-kv-ram-mb", "scale": _MB, "unit": "MB",
        "help": "RAM for KV caches; least recently used idle sessions spill to disk beyond it"})
    max_ram_sessions: int = field(default=256, metadata={
        "flag": "max-kv-ram-sessions", "help": "sessions whose KV stays in RAM at once"})
    max_tokens_per_session: int = field(default=8192, metadata={
        "flag": "max-session-tokens", "help": "longest conversation, in tokens (bounds the context window too)"})
    ttl_seconds: float = field(default=7 * 24 * 3600, metadata={
        "flag": "kv-ttl-hours", "scale": 3600, "unit": "hours",
        "help": "idle sessions older than this lose their KV in every tier (their transcripts stay)"})
    spill_on_disconnect: bool = field(default=False, metadata={
        "help": "write a session's KV to disk and free its RAM as soon as its last client leaves "
                "(default: only under RAM pressure and at shutdown)"})
    write_through: bool = field(default=False, metadata={
        "help": "after every turn, write the session's new KV to the disk tiers (keeping it in RAM): a "
                "process killed or a replica lost leaves its conversations warm; on with --redis-url"})
    shutdown_spill_seconds: float = field(default=20.0, metadata={
        "help": "a graceful shutdown spends at most this long writing the sessions in RAM to disk"})

    @property
    def torch_dtype(self) -> torch.dtype:
        return KV_DTYPES[self.dtype]


@dataclass
class KVStoreStats:
    hits_ram: int = 0
    hits_disk: int = 0
    hits_shared: int = 0  # read from the cluster's shared tier (another replica wrote it, or this one)
    misses: int = 0
    recomputes: int = 0  # a disk file that could not be used (missing/corrupt/mismatched)
    spills: int = 0
    writes_behind: int = 0  # writes after a turn (write_through), the KV staying in RAM
    restores: int = 0
    evictions: dict[str, int] = field(default_factory=dict)  # by cause: pressure, disconnect, ttl, admin
    tokens_reused: int = 0
    shared_hits: int = 0  # turns started on another session's prefix
    shared_tokens: int = 0  # prompt tokens those turns did not compute
    forks: int = 0  # a conversation's branch kept beside the new one (engine/kv/branches.py)
    fork_tokens: int = 0  # positions the new branches read from the kept ones instead of computing
    spill_seconds: float = 0.0
    restore_seconds: float = 0.0
    restore_failures: dict[str, int] = field(default_factory=dict)  # by reason

    def count_eviction(self, cause: str) -> None:
        self.evictions[cause] = self.evictions.get(cause, 0) + 1
