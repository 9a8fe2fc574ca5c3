"""Disk I/O of the KV store, off the engine thread: one I/O thread runs the disk tier's blocking calls and
hands each outcome back to the engine thread through `notify` (the store's state changes only there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from engine.kv.disk_tier import DiskTier

Notify = Callable[[Callable[[], None]], None]  # runs its argument on the engine thread, soon


class DiskIO:
    def __init__(self, disk: DiskTier, notify: Notify):
        self.disk = disk
        self._notify = notify
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-io")

    def write(self, key: str, pieces: list[torch.Tensor], token_ids: list[int],
              done: Callable[[Exception | None, float], None]) -> None:
        """Write pieces (views that must stay unchanged until done) as the file of `key`; then
        done(error or None, seconds) on the engine thread."""
        started = time.perf_counter()

        def run() -> None:
            try:
                self.disk.write(key, pieces, token_ids)
                error = None
            except Exception as exc:  # noqa: BLE001 - reported on the engine thread
                error = exc
            self._notify(lambda: done(error, time.perf_counter() - started))

        self._pool.submit(run)

    def read(self, key: str, allocate: Callable[[int], torch.Tensor],
             done: Callable[[list[int], str, Exception | None, float], None]) -> None:
        """Read and verify the KV of `key` into allocate(num_tokens); then done(token_ids, the tier it came
        from, error or None, seconds) on the engine thread. Any unusable KV is an error (recompute)."""
        started = time.perf_counter()

        def run() -> None:
            try:
                _, token_ids, tier = self.disk.restore_into(key, allocate)
                error = None
            except Exception as exc:  # noqa: BLE001 - any unusable file means recompute
                token_ids, tier, error = [], "", exc
            self._notify(lambda: done(token_ids, tier, error, time.perf_counter() - started))

        self._pool.submit(run)

    def delete(self, key: str, done: Callable[[], None] | None = None) -> None:
        def run() -> None:
            self.disk.delete(key)
            if done is not None:
                self._notify(done)

        self._pool.submit(run)

    def expire(self, max_age_seconds: float) -> None:
        self._pool.submit(self.disk.expire, max_age_seconds)

    def flush(self) -> None:
        """Block until the I/O queued so far has run (tests; its completions are notified as usual)."""
        self._pool.submit(lambda: None).result()

    def shutdown(self) -> None:
        """Finish the I/O in flight and stop the thread (completions notified after this are dropped)."""
        self._pool.shutdown(wait=True)
