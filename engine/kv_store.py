"""Owner of every session's KV in RAM, least recently used first out.

Accounting: a session costs SessionKV.nbytes (its allocated capacity, not its length). When the
total passes max_ram_bytes, idle sessions (no running turn) are evicted from the LRU end.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from engine.kv_cache import SessionKV


@dataclass
class KVStoreStats:
    hits_ram: int = 0
    misses: int = 0
    evictions: int = 0
    tokens_reused: int = 0


@dataclass
class _Entry:
    kv: SessionKV
    is_in_use: bool = False


class KVStore:
    def __init__(self, max_ram_bytes: int, new_kv: Callable[[], SessionKV]):
        self.max_ram_bytes = max_ram_bytes
        self._new_kv = new_kv
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # LRU first
        self.stats = KVStoreStats()

    def acquire(self, key: str) -> tuple[SessionKV, str]:
        """KV for a turn of `key`, marked in use until release(); source is "ram" or "miss"."""
        entry = self._entries.get(key)
        if entry is None or entry.kv.length == 0:
            entry = entry or _Entry(self._new_kv())
            self._entries[key] = entry
            source = "miss"
            self.stats.misses += 1
        else:
            source = "ram"
            self.stats.hits_ram += 1
        assert not entry.is_in_use, f"two turns on one session: {key}"
        entry.is_in_use = True
        self._entries.move_to_end(key)
        return entry.kv, source

    def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.is_in_use = False
        self.enforce_limits()

    def drop(self, key: str) -> None:
        """Forget the KV of `key` (the next turn recomputes). In-use entries are dropped at release."""
        entry = self._entries.get(key)
        if entry is not None and not entry.is_in_use:
            del self._entries[key]

    def contains(self, key: str) -> bool:
        return key in self._entries

    @property
    def num_sessions(self) -> int:
        return len(self._entries)

    @property
    def ram_bytes(self) -> int:
        return sum(e.kv.nbytes for e in self._entries.values())

    def enforce_limits(self) -> None:
        total = self.ram_bytes
        for key in list(self._entries):
            if total <= self.max_ram_bytes:
                break
            entry = self._entries[key]
            if not entry.is_in_use:
                total -= entry.kv.nbytes
                del self._entries[key]
                self.stats.evictions += 1
