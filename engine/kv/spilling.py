"""The KV store's moves between RAM and its disk tiers: spilling a session's KV (an operator, a client
that left, RAM pressure, shutdown), writing it behind a turn (write_through), reading it back, and what
their completions do. A mixin of KVStore (engine/kv/store.py), whose state it uses: entries, disk, io, budget, index, stats, config, new_kv, and
its touch / remove / _forget / _tell. Engine thread only; the I/O runs on DiskIO's thread and comes back
through the store's notify.
"""

from __future__ import annotations

import logging
import time

from engine.kv.entry import Entry, OnDone

log = logging.getLogger(__name__)


class Spilling:
    def spill(self, session_id: str, cause: str = "admin", on_done: OnDone | None = None) -> None:
        """Move the session's KV to disk and free its RAM (now if idle, else when its turn ends)."""
        entry = self.entries.get(session_id)
        if entry is None or entry.state == "restoring":
            if on_done is not None:
                on_done(self.tier_of(session_id))
            return
        if on_done is not None:
            entry.waiters.append(on_done)
        if entry.state == "spilling":
            return  # the write in flight tells the waiters
        if entry.is_in_use:
            entry.spill_when_idle = cause
            return
        self.evict(session_id, entry, cause)

    def restore(self, session_id: str) -> None:
        """Start reading the session's KV back from disk, if it is there and not in RAM (a client
        reconnected, or a turn needs it). Its RAM is reserved first; no room: retried by the next call."""
        if session_id in self.entries or not self.on_disk(session_id):
            return
        kv = self.new_kv(0)
        need = kv.bytes_for(self.disk.nbytes(session_id) // kv.token_bytes)  # a bound of its tokens
        if not self.budget.make_room(need, new_session=True):
            return
        entry = self.entries[session_id] = Entry(kv, state="restoring", is_dirty=False, reserved=need)

        def allocate(n: int):
            assert kv.bytes_for(n) <= need, "file larger than its index entry"
            kv.data = kv.alloc(n)  # the I/O thread alone touches kv until the completion is notified
            return kv.data

        self.io.read(session_id, allocate,
                     lambda ids, tier, error, s: self._restored(session_id, entry, ids, tier, error, s))

    def spill_all(self) -> int:
        """Graceful shutdown (engine thread, no turn running): write every dirty session within
        shutdown_spill_seconds, synchronously. Returns how many were written."""
        if self.io is None:
            return 0
        self.io.shutdown()  # finish writes in flight; their completions are dropped with us
        deadline = time.monotonic() + self.config.shutdown_spill_seconds
        written = 0
        for session_id, entry in reversed(self.entries.items()):  # most recently used first
            if time.monotonic() > deadline:
                log.warning("shutdown spill deadline reached; %d sessions not written", len(self.entries) - written)
                break
            if entry.state == "ram" and entry.is_dirty and entry.kv.length:
                self.disk.write(session_id, entry.kv.pieces(), list(entry.kv.token_ids))
                self.stats.spills += 1
                written += 1
        return written

    def write_behind(self, session_id: str, entry: Entry) -> None:
        """After a turn (config.write_through): write the idle session's KV to the disk tiers and keep it in
        RAM. Only its new chunks are written. A turn that wants it meanwhile waits for the write (its
        buffers must not change during it), the time of writing a chunk or two."""
        if self.io is None or not entry.is_dirty or not entry.kv.length or entry.state != "ram":
            return
        entry.state, entry.after_io = "spilling", "keep"
        self.stats.writes_behind += 1
        self.io.write(session_id, entry.kv.pieces(), list(entry.kv.token_ids),
                      lambda error, seconds: self._spilled(session_id, entry, error, seconds))

    def evict(self, session_id: str, entry: Entry, cause: str) -> int:
        """Free an idle session's RAM: at once if disk already has it (returns bytes freed), else
        by spilling it (returns 0; RAM is freed when the write completes)."""
        self.stats.count_eviction(cause)
        entry.spill_when_idle = ""
        if self.disk is None or not entry.kv.length or (not entry.is_dirty and self.disk.contains(session_id)):
            self.remove(session_id)
            return entry.nbytes
        entry.state, entry.after_io = "spilling", ""
        # views: the entry is idle and its buffers stay as they are until written
        self.io.write(session_id, entry.kv.pieces(), list(entry.kv.token_ids),
                      lambda error, seconds: self._spilled(session_id, entry, error, seconds))
        return 0

    def _spilled(self, session_id: str, entry: Entry, error: Exception | None, seconds: float) -> None:
        if self.entries.get(session_id) is not entry:
            return
        self.stats.spill_seconds += seconds
        if error is not None:
            log.error("spilling KV of a session failed (%s); it will be recomputed", error)
        else:
            self.stats.spills += 1
        if entry.after_io == "drop":
            self._forget(session_id, entry.waiters)
        elif entry.after_io == "keep":  # wanted meanwhile, or written after a turn: stays in RAM
            entry.state, entry.is_dirty, entry.after_io = "ram", error is not None, ""
            self._tell(session_id, entry.waiters)
        else:
            self.remove(session_id)

    def _restored(self, session_id: str, entry: Entry, token_ids: list[int], tier: str, error: Exception | None,
                  seconds: float) -> None:
        if self.entries.get(session_id) is not entry:
            return
        entry.reserved = 0
        self.stats.restore_seconds += seconds
        if error is not None or entry.after_io == "drop":
            if error is not None:
                reason = getattr(error, "reason", type(error).__name__)
                self.stats.recomputes += 1
                self.stats.restore_failures[reason] = self.stats.restore_failures.get(reason, 0) + 1
                log.warning("KV file of a session not used (%s); recomputing from the transcript", error)
            self.remove(session_id)
            return
        entry.kv.token_ids = token_ids
        self.index.set(session_id, token_ids)
        entry.state, entry.restored_from, entry.after_io = "ram", tier, ""
        self.stats.restores += 1
        self.touch(session_id, entry)
