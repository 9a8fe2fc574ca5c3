"""The one owner of every session's KV: a RAM tier bounded in bytes and sessions, least recently
used first out, that spills to a disk tier and restores from it.

RAM accounting: a session costs SessionKV.nbytes, its allocated capacity (not its length), from
the moment it is reserved: a restore reserves its bytes before the file is read, and a turn
reserves the capacity for prompt + max_tokens before it starts, so running turns never grow past
what was counted. A spilling session still counts until its file is written and its tensor freed.
A shared prefix counts once, however many sessions read it. `ram_bytes <= max_ram_bytes` holds at
all times; a turn that would break it waits (acquire returns None) while idle sessions spill.

A session's entry is in one state: "ram", "spilling" (a write in flight; still readable) or
"restoring" (a read in flight). Without an entry its KV is on disk or nowhere.

Threads: every method runs on the engine thread. Disk reads and writes run on one I/O thread
(engine/kv/disk_io.py); their completions come back through `notify(fn)`, which must run fn on
the engine thread. Callbacks named `on_done` receive the session's tier once the change is done.
Moves between RAM and disk (spill, restore, their completions) are in engine/kv/spilling.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from engine.kv.budget import RamBudget
from engine.kv.config import KVStoreConfig, KVStoreStats
from engine.kv.disk_io import DiskIO, Notify
from engine.kv.disk_tier import DiskTier
from engine.kv.entry import Entry, OnDone
from engine.kv.prefix_index import PrefixIndex
from engine.kv.session_kv import SessionKV
from engine.kv.spilling import Spilling


class KVStore(Spilling):
    def __init__(self, config: KVStoreConfig, new_kv: Callable[[int], SessionKV], disk: DiskTier | None,
                 notify: Notify):
        self.config = config
        self.new_kv = new_kv  # capacity in tokens -> an empty SessionKV of this model's layout
        self.disk = disk
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # session id -> entry, least recently used first
        self.io = DiskIO(disk, notify) if disk is not None else None
        self.index = PrefixIndex()  # token ids of every entry (RAM, and disk ones spilled by this process)
        self.budget = RamBudget(config, self.entries, self.evict)
        self.stats = KVStoreStats()
        for session_id, token_ids in disk.scan_prefixes() if disk is not None else []:
            self.index.set(session_id, token_ids)  # conversations spilled before a restart can be found again

    # ---- queries ----

    @property
    def ram_bytes(self) -> int:
        return self.budget.ram_bytes

    def tier_of(self, session_id: str) -> str:
        """"ram" (also while spilling or restoring), "disk" or "none"."""
        if session_id in self.entries:
            return "ram"
        return "disk" if self.on_disk(session_id) else "none"

    def on_disk(self, session_id: str) -> bool:
        return self.disk is not None and self.disk.contains(session_id)

    def is_in_use(self, session_id: str) -> bool:
        entry = self.entries.get(session_id)
        return entry is not None and entry.is_in_use

    def bytes_of(self, session_id: str) -> int:
        entry = self.entries.get(session_id)
        if entry is not None:
            return entry.nbytes
        return self.disk.nbytes(session_id) if self.disk is not None else 0

    # ---- turns ----

    def acquire(self, session_id: str, num_tokens: int) -> tuple[SessionKV, str] | None:
        """KV of the session with capacity for num_tokens, marked in use until release().

        Returns (kv, source) with source "ram", "disk" (read back from disk since last used), "shared"
        (read from the cluster's shared tier) or "miss" (empty KV), or None when not ready yet: the KV is being read from disk, or RAM must
        be freed first. Call again after the next notify.
        """
        entry = self.entries.get(session_id)
        if entry is None and self.on_disk(session_id):
            self.restore(session_id)
            return None
        if entry is not None and entry.state != "ram":
            if entry.state == "spilling":
                entry.after_io = "keep"  # wanted again: keep the RAM copy once the write is done
            return None
        if entry is None:
            if not self.budget.make_room(self.new_kv(0).bytes_for(num_tokens), new_session=True):
                return None
            entry = self.entries[session_id] = Entry(self.new_kv(num_tokens))
            source = "miss"
            self.stats.misses += 1
        else:
            # growing copies into a new buffer while the old one is still held: count both
            growth = entry.kv.bytes_for(num_tokens) if num_tokens > entry.kv.capacity else 0
            if not self.budget.make_room(growth, exclude=(session_id,)):
                return None
            entry.kv.ensure_capacity(num_tokens)
            source = entry.restored_from or "ram"
            if source == "disk":
                self.stats.hits_disk += 1
            elif source == "shared":
                self.stats.hits_shared += 1
            else:
                self.stats.hits_ram += 1
        entry.is_in_use, entry.is_dirty, entry.restored_from = True, True, ""
        self.touch(session_id, entry)
        return entry.kv, source

    def release(self, session_id: str) -> None:
        entry = self.entries.get(session_id)
        if entry is None:
            return
        entry.is_in_use = False
        self.touch(session_id, entry)
        self.index.set(session_id, entry.kv.token_ids)
        # a turn reserved prompt + max_tokens; most answers are shorter: give the rest back now
        # (a copy of the KV on this thread; only when the smaller buffer fits beside the old one)
        kv = entry.kv
        if kv.nbytes > kv.bytes_for(kv.length) and self.ram_bytes + kv.bytes_for(kv.length) <= self.config.max_ram_bytes:
            kv.shrink_to_fit()
        if entry.after_io == "drop":
            self._forget(session_id)
        elif entry.spill_when_idle:
            self.spill(session_id, entry.spill_when_idle)
        elif self.config.write_through:
            self.write_behind(session_id, entry)
        self.budget.make_room(0)

    def new_entry(self, session_id: str, kv: SessionKV) -> Entry:
        entry = self.entries[session_id] = Entry(kv)
        return entry

    def touch(self, session_id: str, entry: Entry) -> None:
        entry.last_used = time.monotonic()
        self.entries.move_to_end(session_id)

    # ---- operator and connection events ----

    def drop(self, session_id: str, cause: str = "admin", on_done: OnDone | None = None) -> None:
        """Forget the session's KV in every tier (the next turn recomputes from the transcript)."""
        entry = self.entries.get(session_id)
        waiters = [on_done] if on_done is not None else []
        if entry is not None:
            self.stats.count_eviction(cause)
            if not entry.is_idle:
                entry.after_io = "drop"  # finished by release() or the I/O completion
                entry.waiters += waiters
                return
            waiters = entry.waiters + waiters
        self._forget(session_id, waiters)

    def rename(self, session_id: str, new_id: str) -> bool:
        """The idle KV of session_id (in RAM, on disk, or both) now belongs to new_id, which has none."""
        entry = self.entries.pop(session_id, None)
        if entry is not None:
            self.entries[new_id] = entry
            if self.on_disk(session_id) and not self.disk.rename(session_id, new_id):
                entry.is_dirty = True  # written again under new_id when it leaves RAM
        elif not self.on_disk(session_id) or not self.disk.rename(session_id, new_id):
            return False
        if entry is not None or session_id in self.index:
            self.index.set(new_id, entry.kv.token_ids if entry is not None else self.index.tokens(session_id))
        self.index.remove(session_id)
        return True

    def expire(self) -> None:
        """Drop sessions idle for longer than the TTL from both tiers (their transcripts stay)."""
        cutoff = time.monotonic() - self.config.ttl_seconds
        for session_id, entry in list(self.entries.items()):
            if entry.last_used < cutoff and entry.is_idle:
                self.stats.count_eviction("ttl")
                self.remove(session_id)
        if self.io is not None:
            self.io.expire(self.config.ttl_seconds)
        for session_id in [s for s in self.index.known_keys() if self.tier_of(s) == "none"]:
            self.index.remove(session_id)  # expired or deleted on disk

    # ---- forgetting ----

    def remove(self, session_id: str) -> None:
        """Forget the RAM entry (a shared prefix it read is freed when nobody else reads it)."""
        entry = self.entries.pop(session_id, None)
        if entry is not None:
            entry.kv.detach()
            self._tell(session_id, entry.waiters)

    def _forget(self, session_id: str, waiters: list[OnDone] | None = None) -> None:
        waiters = list(waiters or [])
        entry = self.entries.pop(session_id, None)
        if entry is not None:
            entry.kv.detach()
            waiters += [w for w in entry.waiters if w not in waiters]
        self.index.remove(session_id)
        if self.io is not None:
            self.io.delete(session_id, lambda: self._tell(session_id, waiters))
        else:
            self._tell(session_id, waiters)

    def _tell(self, session_id: str, waiters: list[OnDone]) -> None:
        tier = self.tier_of(session_id)
        for waiter in waiters:
            waiter(tier)
        waiters.clear()
