"""The disk tier of session KV: one file per session (storage/kv_format.py) in one directory, bounded in
bytes (least recently used files go first), listed at start-up without reading any KV.

Thread-safety: every method may be called from any thread; the index is guarded by a lock.
Disk I/O happens in write() and read_into(); callers keep them off the event loop and the model thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from storage.errors import KVFileInvalid
from storage.kv_format import SUFFIX, TMP_SUFFIX, KVLayout, read_kv, read_metadata, write_kv


@dataclass
class KVFileStats:
    num_written: int = 0
    num_read: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    write_seconds: float = 0.0
    read_seconds: float = 0.0
    num_evicted: int = 0  # deleted to stay under max_bytes
    num_expired: int = 0  # deleted by TTL
    num_invalid: int = 0  # rejected on read, by reason in `invalid`
    invalid: dict[str, int] = field(default_factory=dict)
    num_stray_removed: int = 0  # temporary files of interrupted writes, removed at start-up
    num_write_failures: int = 0  # writes that raised (disk full, unwritable directory...)


class KVFileStore:
    def __init__(self, directory: Path, layout: KVLayout, max_bytes: int):
        self.directory = directory
        self.layout = layout
        self.max_bytes = max_bytes
        self.stats = KVFileStats()
        self.write_error: str | None = None  # why the last write failed; None once one succeeds again
        self._lock = threading.Lock()
        self._index: OrderedDict[str, tuple[int, float]] = OrderedDict()  # file name -> (bytes, last used); LRU first
        directory.mkdir(parents=True, exist_ok=True)
        self._reindex()

    # ---- index ----

    def file_name(self, session_id: str) -> str:
        """Never derived from client text directly: a hash of the session id."""
        return hashlib.sha256(session_id.encode()).hexdigest()[:40] + SUFFIX

    def contains(self, session_id: str) -> bool:
        with self._lock:
            return self.file_name(session_id) in self._index

    def nbytes(self, session_id: str) -> int:
        with self._lock:
            entry = self._index.get(self.file_name(session_id))
            return entry[0] if entry else 0

    @property
    def num_files(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for size, _ in self._index.values())

    def _reindex(self) -> None:
        """At start-up: list files (no KV is read) and remove temporaries left by a crash."""
        entries = []
        for path in self.directory.iterdir():
            if path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
                self.stats.num_stray_removed += 1
            elif path.name.endswith(SUFFIX):
                st = path.stat()
                entries.append((st.st_mtime, path.name, st.st_size))
        for mtime, name, size in sorted(entries):
            self._index[name] = (size, mtime)
        self._enforce_limit()

    def scan_prefixes(self) -> list[tuple[str, list[int]]]:
        """(session id, token ids) of every file written for this model (headers only; at start-up,
        so the engine's prefix index covers the disk tier too). Unreadable headers are skipped here
        and rejected when read."""
        found = []
        with self._lock:
            names = list(self._index)
        for name in names:
            try:
                meta = read_metadata(self.directory / name)
                session_id = meta["session_key"]
                if meta.get("model_fingerprint") == self.layout.fingerprint and self.file_name(session_id) == name:
                    found.append((session_id, json.loads(meta["token_ids"])))
            except (OSError, ValueError, KeyError, TypeError, struct.error):
                continue
        return found

    # ---- write ----

    def write(self, session_id: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int:
        """Atomically store KV covering `token_ids`: `data` [layers, 2, kv_heads, capacity, head_dim]
        (positions < len(token_ids) are written), or consecutive pieces [layers, 2, kv_heads, n_i, head_dim]
        with sum(n_i) == len(token_ids) (a shared prefix and a session's own part).

        `data` must not change during the call. Returns bytes written. Deletes least recently used
        files if the tier is over max_bytes.
        """
        start = time.perf_counter()
        pieces = [data[:, :, :, :len(token_ids)]] if isinstance(data, torch.Tensor) else data
        name = self.file_name(session_id)
        final = self.directory / name
        tmp = self.directory / f"{name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                size = write_kv(f, self.layout, session_id, pieces, token_ids)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self.stats.num_write_failures += 1
                self.write_error = f"{type(exc).__name__}: {exc}"
            raise
        self.write_error = None
        with self._lock:
            self._index[name] = (size, time.time())
            self._index.move_to_end(name)
            self.stats.num_written += 1
            self.stats.bytes_written += size
            self.stats.write_seconds += time.perf_counter() - start
            self._enforce_limit()
        return size

    def check_writable(self) -> bool:
        """False while writes fail. After a failure, tries a small probe file (written, synced, removed)
        so that recovery (space freed, permissions fixed) shows without waiting for the next spill."""
        if self.write_error is None:
            return True
        probe = self.directory / f"probe.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            self.write_error = None
            return True
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    # ---- read ----

    def read_into(self, session_id: str, allocate) -> tuple[torch.Tensor, list[int]]:
        """Load and verify the file of `session_id`. `allocate(num_tokens)` returns the destination tensor
        [layers, 2, kv_heads, capacity >= num_tokens, head_dim]; the payload is read straight into it.

        Raises KVFileInvalid (the file is then deleted) when the file must not be used.
        """
        start = time.perf_counter()
        name = self.file_name(session_id)
        path = self.directory / name
        try:
            data, token_ids, size = read_kv(path, self.layout, allocate)
        except KVFileInvalid as exc:
            path.unlink(missing_ok=True)
            with self._lock:
                self._index.pop(name, None)
                self.stats.num_invalid += 1
                self.stats.invalid[exc.reason] = self.stats.invalid.get(exc.reason, 0) + 1
            raise
        now = time.time()
        os.utime(path, (now, now))  # the file's mtime is its LRU position after a restart
        with self._lock:
            if name in self._index:
                self._index[name] = (size, now)
                self._index.move_to_end(name)
            self.stats.num_read += 1
            self.stats.bytes_read += size
            self.stats.read_seconds += time.perf_counter() - start
        return data, token_ids

    # ---- delete ----

    def delete(self, session_id: str) -> bool:
        name = self.file_name(session_id)
        with self._lock:
            existed = self._index.pop(name, None) is not None
        (self.directory / name).unlink(missing_ok=True)
        return existed

    def rename(self, session_id: str, new_id: str) -> bool:
        """The file of `session_id` now belongs to `new_id` (its contents name no session_id). False if absent."""
        name, new_name = self.file_name(session_id), self.file_name(new_id)
        with self._lock:
            entry = self._index.pop(name, None)
            if entry is None:
                return False
            try:
                os.replace(self.directory / name, self.directory / new_name)
            except OSError:
                return False
            self._index[new_name] = entry
            return True

    def expire(self, max_age_seconds: float) -> int:
        """Delete files not used for max_age_seconds. Returns how many."""
        cutoff = time.time() - max_age_seconds
        with self._lock:
            old = [name for name, (_, used) in self._index.items() if used < cutoff]
            for name in old:
                del self._index[name]
            self.stats.num_expired += len(old)
        for name in old:
            (self.directory / name).unlink(missing_ok=True)
        return len(old)

    def _enforce_limit(self) -> None:
        """Lock held. Least recently used files go first."""
        total = sum(size for size, _ in self._index.values())
        while total > self.max_bytes and self._index:
            name, (size, _) = self._index.popitem(last=False)
            (self.directory / name).unlink(missing_ok=True)
            total -= size
            self.stats.num_evicted += 1


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
