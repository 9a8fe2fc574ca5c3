"""The one owner of every session's KV: a RAM tier bounded in bytes and sessions, least recently
used first out, that spills to a disk tier and restores from it.

RAM accounting: a session costs SessionKV.nbytes, its allocated capacity (not its length), from
the moment it is reserved: a restore reserves its bytes before the file is read, and a turn
reserves the capacity for prompt + max_tokens before it starts, so running turns never grow past
what was counted. A spilling session still counts until its file is written and its tensor freed.
A shared prefix (engine/kv/sharing.py) counts once, however many sessions read it.
`ram_bytes <= max_ram_bytes` holds at all times; a turn that would break it waits (acquire
returns None) while idle sessions spill.

Threads: every method runs on the engine thread. Disk reads and writes run on one I/O thread;
their completions come back through `notify(fn)`, which must run fn on the engine thread.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from engine.kv.disk_tier import DiskTier
from engine.kv.session_kv import SessionKV, SharedPrefix
from engine.kv.sharing import PrefixSharing
from engine.kv.prefix_index import PrefixIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KVStoreConfig:
    max_ram_bytes: int = 4 << 30
    max_ram_sessions: int = 256
    max_tokens_per_session: int = 8192  # bounds the context window too
    max_disk_bytes: int = 20 << 30
    ttl_seconds: float = 7 * 24 * 3600  # idle sessions older than this lose their KV in every tier
    spill_on_disconnect: bool = False  # True: write and free a session's KV as soon as its client leaves
    shutdown_spill_seconds: float = 20.0  # graceful shutdown spends at most this writing RAM sessions


@dataclass
class KVStoreStats:
    hits_ram: int = 0
    hits_disk: int = 0
    misses: int = 0
    recomputes: int = 0  # a disk file that could not be used (missing/corrupt/mismatched)
    spills: int = 0
    restores: int = 0
    evictions: dict[str, int] = field(default_factory=dict)  # by cause: pressure, disconnect, ttl, admin, shutdown
    tokens_reused: int = 0
    shared_hits: int = 0  # turns started on another session's prefix
    shared_tokens: int = 0  # prompt tokens those turns did not compute
    spill_seconds: float = 0.0
    restore_seconds: float = 0.0
    restore_failures: dict[str, int] = field(default_factory=dict)  # by reason


@dataclass(eq=False)
class _Entry:
    kv: SessionKV
    state: str = "ram"  # ram | spilling | restoring
    is_in_use: bool = False
    is_dirty: bool = True  # RAM holds KV that the disk copy lacks
    from_disk: bool = False  # read back from disk since last used: the next turn reports "disk"
    reserved: int = 0  # bytes counted for a restore in flight
    after_io: str = ""  # "drop" | "keep": overrides the default outcome of the I/O in flight
    spill_when_idle: str = ""  # cause, set when asked to spill while in use
    last_used: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.reserved or self.kv.nbytes


class KVStore(PrefixSharing):
    def __init__(self, config: KVStoreConfig, new_kv: Callable[[int], SessionKV], disk: DiskTier | None,
                 notify: Callable[[Callable[[], None]], None]):
        self.config = config
        self._new_kv = new_kv
        self.disk = disk
        self._notify = notify
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # LRU first
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-io")
        self.index = PrefixIndex()  # token ids of every entry (RAM, and disk ones spilled by this process)
        # shared prefixes alive: a SharedPrefix lives while a SessionKV reads it (weak references)
        self._shared: weakref.WeakSet[SharedPrefix] = weakref.WeakSet()
        scan = getattr(disk, "scan_prefixes", None)
        for key, token_ids in scan() if scan is not None else []:
            self.index.set(key, token_ids)  # conversations spilled before a restart can be found again
        self.stats = KVStoreStats()

    # ---- queries ----

    @property
    def ram_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values()) + self.shared_bytes

    @property
    def shared_bytes(self) -> int:
        """Shared prefixes, each counted once however many sessions read it."""
        return sum(p.nbytes for p in self._shared)

    @property
    def num_shared(self) -> int:
        return len(self._shared)

    @property
    def num_ram_sessions(self) -> int:
        return len(self._entries)

    def tier_of(self, key: str) -> str:
        """"ram" (also while spilling or restoring), "disk" or "none"."""
        if key in self._entries:
            return "ram"
        return "disk" if self.disk is not None and self.disk.contains(key) else "none"

    def is_in_use(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.is_in_use

    def bytes_of(self, key: str) -> int:
        entry = self._entries.get(key)
        if entry is not None:
            return entry.nbytes
        return self.disk.nbytes(key) if self.disk is not None else 0

    # ---- turns ----

    def acquire(self, key: str, num_tokens: int) -> tuple[SessionKV, str] | None:
        """KV of `key` with capacity for num_tokens, marked in use until release().

        Returns (kv, source) with source "ram", "disk" (read back from disk since last used) or
        "miss" (empty KV), or None when not ready yet: the KV is being read from disk, or RAM must
        be freed first. Call again after the next notify.
        """
        entry = self._entries.get(key)
        if entry is None and self.disk is not None and self.disk.contains(key):
            self._start_restore(key)
            return None
        if entry is not None and entry.state != "ram":
            if entry.state == "spilling":
                entry.after_io = "keep"  # wanted again: keep the RAM copy once the write is done
            return None
        if entry is None:
            need = self._new_kv(0).bytes_for(num_tokens)
            if not self._make_room(need, new_session=True):
                return None
            entry = self._entries[key] = _Entry(self._new_kv(num_tokens))
            source = "miss"
            self.stats.misses += 1
        else:
            # growing copies into a new buffer while the old one is still held: count both
            growth = entry.kv.bytes_for(num_tokens) if num_tokens > entry.kv.capacity else 0
            if not self._make_room(growth, exclude=key):
                return None
            entry.kv.ensure_capacity(num_tokens)
            source = "disk" if entry.from_disk else "ram"
            if source == "disk":
                self.stats.hits_disk += 1
            else:
                self.stats.hits_ram += 1
        entry.is_in_use, entry.is_dirty, entry.from_disk = True, True, False
        self._touch(key, entry)
        return entry.kv, source

    def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.is_in_use = False
        self._touch(key, entry)
        self.index.set(key, entry.kv.token_ids)
        # a turn reserved prompt + max_tokens; most answers are shorter: give the rest back now
        # (a copy of the KV on this thread; only when the smaller buffer fits beside the old one)
        if entry.kv.nbytes - entry.kv.bytes_for(entry.kv.length) and \
                self.ram_bytes + entry.kv.bytes_for(entry.kv.length) <= self.config.max_ram_bytes:
            entry.kv.shrink_to_fit()
        if entry.after_io == "drop":
            self._forget(key)
        elif entry.spill_when_idle:
            self.spill(key, entry.spill_when_idle)
        self.enforce_limits()

    # ---- operator and connection events ----

    def spill(self, key: str, cause: str = "admin") -> None:
        """Move `key` to disk and free its RAM (now if idle, else when its turn ends)."""
        entry = self._entries.get(key)
        if entry is None or entry.state != "ram":
            return
        if entry.is_in_use:
            entry.spill_when_idle = cause
            return
        self._evict(key, entry, cause)

    def prefetch(self, key: str) -> None:
        """Start reading `key` back from disk if it is there (a client reconnected)."""
        if key not in self._entries and self.disk is not None and self.disk.contains(key):
            self._start_restore(key)

    def drop(self, key: str, cause: str = "admin") -> None:
        """Forget `key` in every tier (the next turn recomputes from the transcript)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._count_eviction(cause)
            if entry.is_in_use or entry.state != "ram":
                entry.after_io = "drop"  # finished by release() or the I/O completion
            else:
                self._remove(key)
        self.index.remove(key)
        if self.disk is not None:
            self._io.submit(self.disk.delete, key)

    def enforce_limits(self) -> None:
        """Spill least recently used idle sessions while a RAM limit is exceeded."""
        self._make_room(0)

    def expire(self) -> None:
        """Drop sessions idle for longer than the TTL from both tiers (their transcripts stay)."""
        cutoff = time.monotonic() - self.config.ttl_seconds
        for key, entry in list(self._entries.items()):
            if entry.last_used < cutoff and not entry.is_in_use and entry.state == "ram":
                self._count_eviction("ttl")
                self._remove(key)
        if self.disk is not None:
            self._io.submit(self.disk.expire, self.config.ttl_seconds)
        for key in [k for k in self.index.known_keys() if self.tier_of(k) == "none"]:
            self.index.remove(key)  # expired or deleted on disk

    def spill_all(self) -> int:
        """Graceful shutdown (engine thread, no turn running): write every dirty session within
        shutdown_spill_seconds, synchronously. Returns how many were written."""
        self._io.shutdown(wait=True)  # finish writes in flight; their completions are dropped with us
        if self.disk is None:
            return 0
        deadline = time.monotonic() + self.config.shutdown_spill_seconds
        written = 0
        for key, entry in reversed(self._entries.items()):  # most recently used first
            if time.monotonic() > deadline:
                log.warning("shutdown spill deadline reached; %d sessions not written", len(self._entries) - written)
                break
            if entry.state == "ram" and entry.is_dirty and entry.kv.length:
                self.disk.write(key, entry.kv.pieces(), list(entry.kv.token_ids))
                self.stats.spills += 1
                written += 1
        return written

    # ---- internals ----

    def _new_entry(self, key: str) -> _Entry:
        entry = self._entries[key] = _Entry(self._new_kv(0))
        return entry

    def _touch(self, key: str, entry: _Entry) -> None:
        entry.last_used = time.monotonic()
        self._entries.move_to_end(key)

    def _make_room(self, need: int, exclude: str | tuple[str, ...] | None = None, new_session: bool = False) -> bool:
        """True if `need` more bytes (and one more session, if new_session) fit in RAM now.
        Otherwise starts spilling least recently used idle sessions (enough to fit once the writes
        in flight complete), never those in `exclude`, and returns False."""
        cfg = self.config
        exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())

        def fits(num_bytes: int, num_sessions: int) -> bool:
            return num_bytes + need <= cfg.max_ram_bytes and num_sessions + new_session <= cfg.max_ram_sessions

        total, sessions = self.ram_bytes, len(self._entries)
        if not fits(total, sessions):
            total -= self._shrink_idle(total, exclude)
        spilling = [e for e in self._entries.values() if e.state == "spilling"]
        after_spills = (total - sum(e.nbytes for e in spilling), sessions - len(spilling))
        for key, entry in list(self._entries.items()):
            if fits(*after_spills):
                break
            if key in exclude or entry.is_in_use or entry.state != "ram":
                continue
            freed_now = self._evict(key, entry, "pressure")
            after_spills = (after_spills[0] - entry.nbytes, after_spills[1] - 1)
            if freed_now:
                total, sessions = total - freed_now, sessions - 1
        return fits(total, sessions)

    def _shrink_idle(self, total: int, exclude: tuple[str, ...]) -> int:
        """Cheaper than spilling: give back the unused capacity of idle sessions. Returns bytes
        freed. A shrink copies into a smaller buffer, which must itself fit while both exist."""
        freed = 0
        for key, entry in self._entries.items():
            if key in exclude or entry.is_in_use or entry.state != "ram":
                continue
            if total - freed + entry.kv.bytes_for(entry.kv.length) <= self.config.max_ram_bytes:
                freed += entry.kv.shrink_to_fit()
        return freed

    def _evict(self, key: str, entry: _Entry, cause: str) -> int:
        """Free an idle session's RAM: at once if disk already has it (returns bytes freed), else
        by spilling it (returns 0; RAM is freed when the write completes)."""
        self._count_eviction(cause)
        entry.spill_when_idle = ""
        if self.disk is None or not entry.kv.length:
            self._remove(key)
            return entry.nbytes
        if not entry.is_dirty and self.disk.contains(key):
            self._remove(key)
            return entry.nbytes
        entry.state, entry.after_io = "spilling", ""
        token_ids = list(entry.kv.token_ids)
        pieces = entry.kv.pieces()  # views: the entry is idle and its buffers stay as they are until written
        started = time.perf_counter()

        def write() -> None:
            try:
                self.disk.write(key, pieces, token_ids)
                error = None
            except Exception as exc:  # noqa: BLE001 - reported on the engine thread
                error = exc
            self._notify(lambda: self._spilled(key, entry, error, time.perf_counter() - started))

        self._io.submit(write)
        return 0

    def _spilled(self, key: str, entry: _Entry, error: Exception | None, seconds: float) -> None:
        if self._entries.get(key) is not entry:
            return
        self.stats.spill_seconds += seconds
        if error is not None:
            log.error("spilling KV of a session failed (%s); it will be recomputed", error)
        else:
            self.stats.spills += 1
        if entry.after_io == "drop":
            self._forget(key)
        elif entry.after_io == "keep" and error is None:
            entry.state, entry.is_dirty, entry.after_io = "ram", False, ""
        else:
            self._remove(key)

    def _start_restore(self, key: str) -> None:
        kv = self._new_kv(0)
        need = kv.bytes_for(self.disk.nbytes(key) // kv.token_bytes)  # file size bounds the token count
        if not self._make_room(need, new_session=True):
            return  # retried by the next acquire/prefetch once RAM is free
        entry = self._entries[key] = _Entry(kv, state="restoring", is_dirty=False, reserved=need)
        started = time.perf_counter()

        def allocate(n: int) -> torch.Tensor:
            assert kv.bytes_for(n) <= need, "file larger than its index entry"
            kv.data = kv.alloc(n)  # this thread only touches kv until the completion is notified
            return kv.data

        def read() -> None:
            try:
                _, token_ids = self.disk.read_into(key, allocate)
                error = None
            except Exception as exc:  # noqa: BLE001 - any unusable file means recompute
                token_ids, error = [], exc
            self._notify(lambda: self._restored(key, entry, token_ids, error, time.perf_counter() - started))

        self._io.submit(read)

    def _restored(self, key: str, entry: _Entry, token_ids: list[int], error: Exception | None, seconds: float) -> None:
        if self._entries.get(key) is not entry:
            return
        entry.reserved = 0
        self.stats.restore_seconds += seconds
        if error is not None or entry.after_io == "drop":
            if error is not None:
                reason = getattr(error, "reason", type(error).__name__)
                self.stats.recomputes += 1
                self.stats.restore_failures[reason] = self.stats.restore_failures.get(reason, 0) + 1
                log.warning("KV file of a session not used (%s); recomputing from the transcript", error)
            self._remove(key)
            return
        entry.kv.token_ids = token_ids
        self.index.set(key, token_ids)
        entry.state, entry.from_disk, entry.after_io = "ram", True, ""
        self.stats.restores += 1
        self._touch(key, entry)

    def _remove(self, key: str) -> None:
        """Forget the RAM entry of `key`; a shared prefix it read is freed when nobody else reads it."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.kv.detach()

    def _forget(self, key: str) -> None:
        self._remove(key)
        self.index.remove(key)
        if self.disk is not None:
            self._io.submit(self.disk.delete, key)

    def _count_eviction(self, cause: str) -> None:
        self.stats.evictions[cause] = self.stats.evictions.get(cause, 0) + 1
