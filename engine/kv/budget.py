"""The KV store's RAM budget: what its entries and shared prefixes hold, and which idle sessions make
room when a new reservation would exceed max_ram_bytes or max_ram_sessions (least recently used first;
giving back unused capacity first, which is cheaper than spilling). Engine thread only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping

from engine.kv.config import KVStoreConfig
from engine.kv.entry import Entry
from engine.kv.session_kv import SharedPrefix


class RamBudget:
    def __init__(self, config: KVStoreConfig, entries: Mapping[str, Entry],
                 evict: Callable[[str, Entry, str], int]):
        """entries: the store's, least recently used first (read, never changed here); evict(session_id,
        entry, cause) frees an idle entry's RAM, returning the bytes freed now (0: when its write completes)."""
        self.config = config
        self._entries = entries
        self._evict = evict
        # shared prefixes alive: a SharedPrefix lives while a SessionKV reads it (weak references)
        self._shared: weakref.WeakSet[SharedPrefix] = weakref.WeakSet()

    def add_shared(self, shared: SharedPrefix) -> None:
        self._shared.add(shared)

    @property
    def shared_bytes(self) -> int:
        """Shared prefixes, each counted once however many sessions read it."""
        return sum(p.nbytes for p in self._shared)

    @property
    def num_shared(self) -> int:
        return len(self._shared)

    @property
    def ram_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values()) + self.shared_bytes

    def make_room(self, need: int, exclude: tuple[str, ...] = (), new_session: bool = False) -> bool:
        """True if `need` more bytes (and one more session, if new_session) fit in RAM now.
        Otherwise starts spilling least recently used idle sessions (enough to fit once the writes
        in flight complete), never those in `exclude`, and returns False."""
        cfg = self.config

        def fits(num_bytes: int, num_sessions: int) -> bool:
            return num_bytes + need <= cfg.max_ram_bytes and num_sessions + new_session <= cfg.max_ram_sessions

        total, sessions = self.ram_bytes, len(self._entries)
        if not fits(total, sessions):
            total -= self._shrink_idle(total, exclude)
        spilling = [e for e in self._entries.values() if e.state == "spilling"]
        after_spills = (total - sum(e.nbytes for e in spilling), sessions - len(spilling))
        for session_id, entry in list(self._entries.items()):
            if fits(*after_spills):
                break
            if session_id in exclude or entry.is_in_use or entry.state != "ram":
                continue
            freed_now = self._evict(session_id, entry, "pressure")
            after_spills = (after_spills[0] - entry.nbytes, after_spills[1] - 1)
            if freed_now:
                total, sessions = total - freed_now, sessions - 1
        return fits(total, sessions)

    def _shrink_idle(self, total: int, exclude: tuple[str, ...]) -> int:
        """Give back the unused capacity of idle sessions. Returns bytes freed. A shrink copies into a
        smaller buffer, which must itself fit while both exist."""
        freed = 0
        for session_id, entry in self._entries.items():
            if session_id in exclude or entry.is_in_use or entry.state != "ram":
                continue
            if total - freed + entry.kv.bytes_for(entry.kv.length) <= self.config.max_ram_bytes:
                freed += entry.kv.shrink_to_fit()
        return freed
