"""The disk tier of session KV (docs/KV_FORMAT.md): content-named chunk files shared by every session whose
KV holds them (the branches of a conversation, conversations that begin alike), and one small manifest
per session naming its tokens (where each file is: storage/kv_index.py). Bounded in bytes: least recently
used sessions go first, and a chunk goes with the last session that holds it. A session spilled again
writes only the chunks it did not have.

Thread-safety: every method may be called from any thread; the index is guarded by a lock, and a chunk
file is deleted only under it, once no session and no write in progress holds it. Disk I/O happens in
write(), read_into() and rename(); callers keep them off the event loop and the model thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from storage.atomic_files import TMP_SUFFIX, fsync_dir, write_atomically
from storage.errors import KVFileInvalid
from storage.kv_format import (LEGACY_VERSION, KVLayout, chunk_names, manifest_bytes, read_chunk,
                               read_manifest, read_metadata, read_session, slice_pieces, write_chunk)
from storage.kv_index import KVIndex, StoredSession

DEFAULT_CHUNK_TOKENS = 256


@dataclass
class KVFileStats:
    num_written: int = 0  # sessions written
    num_read: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    write_seconds: float = 0.0
    read_seconds: float = 0.0
    chunks_written: int = 0
    chunks_reused: int = 0  # chunks a write found on disk already (its session's, a branch's, another session's)
    bytes_reused: int = 0  # their bytes: not written again, not stored twice
    num_evicted: int = 0  # sessions deleted to stay under max_bytes
    num_expired: int = 0  # sessions deleted by TTL
    num_invalid: int = 0  # rejected on read, by reason in `invalid`
    invalid: dict[str, int] = field(default_factory=dict)
    num_stray_removed: int = 0  # at start-up: temporaries of interrupted writes, chunks no session holds, bad manifests
    num_write_failures: int = 0  # writes that raised (disk full, unwritable directory...)


class KVFileStore:
    def __init__(self, directory: Path, layout: KVLayout, max_bytes: int, chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.directory = directory
        self.layout = layout
        self.max_bytes = max_bytes
        self.chunk_tokens = chunk_tokens
        self.stats = KVFileStats()
        self.shared_stats = None  # a local tier alone: no shared one (storage/kv_tiers.py)
        self.write_error: str | None = None  # why the last write failed; None once one succeeds again
        self._lock = threading.Lock()
        self._index = KVIndex(directory)
        self.sessions_dir, self.chunks_dir = self._index.sessions_dir, self._index.chunks_dir
        with self._lock:
            self.stats.num_stray_removed += self._index.load(layout.token_bytes(), self.file_name)
            self._enforce_limit()

    # ---- index ----

    def file_name(self, session_id: str) -> str:
        """The stem of the session's files; never derived from client text directly."""
        return hashlib.sha256(session_id.encode()).hexdigest()[:40]

    def contains(self, session_id: str) -> bool:
        with self._lock:
            return self.file_name(session_id) in self._index.sessions

    def nbytes(self, session_id: str) -> int:
        """Bytes of the session's KV in RAM terms (its tokens x bytes per token); 0 if absent."""
        with self._lock:
            s = self._index.sessions.get(self.file_name(session_id))
            return s.tokens * self.layout.token_bytes() if s else 0

    @property
    def num_sessions(self) -> int:
        with self._lock:
            return len(self._index.sessions)

    @property
    def num_chunks(self) -> int:
        with self._lock:
            return self._index.num_complete()

    @property
    def total_bytes(self) -> int:
        """Bytes on disk: every chunk once, however many sessions hold it, plus manifests."""
        with self._lock:
            return self._index.nbytes

    def scan_prefixes(self) -> list[tuple[str, list[int]]]:
        """(session id, token ids) of every session on disk for this model (manifests and legacy headers;
        at start-up, so the engine's prefix index covers the disk tier too). Unreadable ones are skipped
        here and rejected when read."""
        found = []
        with self._lock:
            stems = [(stem, s.legacy) for stem, s in self._index.sessions.items()]
        for stem, legacy in stems:
            try:
                if legacy:
                    meta = read_metadata(self._index.legacy(stem))
                    key, fingerprint, token_ids = meta["session_key"], meta["model_fingerprint"], meta["token_ids"]
                    token_ids = json.loads(token_ids)
                else:
                    m = read_manifest(self._index.manifest(stem))
                    key, fingerprint, token_ids = m["session_key"], m["model_fingerprint"], m["token_ids"]
                if fingerprint == self.layout.fingerprint and self.file_name(key) == stem:
                    found.append((key, token_ids))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    # ---- write ----

    def write(self, session_id: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int:
        """Atomically store KV covering `token_ids`: `data` [layers, 2, kv_heads, capacity, head_dim]
        (positions < len(token_ids) are written), or consecutive pieces [layers, 2, kv_heads, n_i, head_dim]
        with sum(n_i) == len(token_ids) (a shared prefix and a session's own part).

        `data` must not change during the call. Only the chunks not on disk yet are written. Returns bytes
        written. Deletes least recently used sessions if the tier is over max_bytes.
        """
        start = time.perf_counter()
        pieces = [data[:, :, :, :len(token_ids)]] if isinstance(data, torch.Tensor) else data
        stem, C = self.file_name(session_id), self.chunk_tokens
        names = chunk_names(self.layout.fingerprint, self.layout.dtype_name, token_ids, C)
        with self._lock:  # hold every chunk, so that no other thread deletes it meanwhile
            found = self._index.claim(names)
        written: list[tuple[str, int]] = []
        try:
            for i, name in enumerate(names):
                if name not in found:
                    part = token_ids[i * C:(i + 1) * C]
                    size = write_atomically(self._index.chunk(name), lambda f: write_chunk(
                        f, self.layout, slice_pieces(pieces, i * C, len(part)), part, names[i - 1] if i else ""))
                    written.append((name, size))
            manifest = manifest_bytes(self.layout, session_id, token_ids, C)
            write_atomically(self._index.manifest(stem), lambda f: f.write(manifest))
            fsync_dir(self.chunks_dir)
            fsync_dir(self.sessions_dir)
        except BaseException as exc:
            with self._lock:
                for name in names:
                    self._index.release(name)  # a chunk this write alone held goes
                self.stats.num_write_failures += 1
                self.write_error = f"{type(exc).__name__}: {exc}"
            raise
        self.write_error = None
        new_bytes = sum(size for _, size in written) + len(manifest)
        with self._lock:
            for name, size in written:
                self._index.complete(name, size)
            self._index.add(stem, StoredSession(len(token_ids), names, len(manifest), time.time()))
            self.stats.num_written += 1
            self.stats.chunks_written += len(written)
            self.stats.chunks_reused += len(found)
            self.stats.bytes_reused += sum(self._index.chunks[name][0] for name in found)
            self.stats.bytes_written += new_bytes
            self.stats.write_seconds += time.perf_counter() - start
            self._enforce_limit()
        return new_bytes

    def check_writable(self) -> bool:
        """False while writes fail. After a failure, tries a small probe file (written, synced, removed)
        so that recovery (space freed, permissions fixed) shows without waiting for the next spill."""
        if self.write_error is None:
            return True
        probe = self.chunks_dir / f"probe.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
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
        """Load and verify the KV of `session_id`. `allocate(num_tokens)` returns the destination tensor
        [layers, 2, kv_heads, capacity >= num_tokens, head_dim]; the payload is read straight into it.

        Raises KVFileInvalid (the session's files are then deleted: its manifest, and a chunk found bad)
        when the KV must not be used.
        """
        start = time.perf_counter()
        stem = self.file_name(session_id)
        with self._lock:
            session = self._index.sessions.get(stem)
        try:
            if session is None:
                raise KVFileInvalid("missing")
            if session.legacy:
                path = self._index.legacy(stem)
                data, token_ids, _, size = read_chunk(path, self.layout, allocate, LEGACY_VERSION)
            else:
                data, token_ids, size = self._read_chunks(self._index.manifest(stem), session, allocate)
        except KVFileInvalid as exc:
            with self._lock:
                self._index.drop(stem)
                self.stats.num_invalid += 1
                self.stats.invalid[exc.reason] = self.stats.invalid.get(exc.reason, 0) + 1
            raise
        now = time.time()
        with self._lock:
            self._index.touch(stem, session, now)
            self.stats.num_read += 1
            self.stats.bytes_read += size
            self.stats.read_seconds += time.perf_counter() - start
        try:  # the manifest's mtime is the session's LRU position after a restart
            os.utime(self._index.file_of(stem, session), (now, now))
        except OSError:
            pass
        return data, token_ids

    def _read_chunks(self, path: Path, session: StoredSession, allocate) -> tuple[torch.Tensor, list[int], int]:
        try:
            m = read_manifest(path)
        except FileNotFoundError:
            raise KVFileInvalid("missing") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KVFileInvalid("corrupt", f"manifest: {exc}") from None
        if chunk_names(m["model_fingerprint"], m["dtype"], m["token_ids"], m["chunk_tokens"]) != session.chunks:
            raise KVFileInvalid("corrupt", "manifest changed")

        def fetch(name: str) -> tuple[BinaryIO, int]:
            try:
                f = open(self._index.chunk(name), "rb")
            except FileNotFoundError:
                raise KVFileInvalid("missing") from None
            return f, os.fstat(f.fileno()).st_size

        try:
            return read_session(self.layout, m, allocate, fetch)
        except KVFileInvalid as exc:
            if exc.chunk is not None:
                with self._lock:
                    self._index.drop_chunk(exc.chunk)
            raise

    def restore_into(self, session_id: str, allocate) -> tuple[torch.Tensor, list[int], str]:
        """read_into, and the tier it read: "disk" (the engine's DiskTier interface)."""
        return (*self.read_into(session_id, allocate), "disk")

    # ---- delete ----

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._index.drop(self.file_name(session_id))

    def rename(self, session_id: str, new_id: str) -> bool:
        """The KV of `session_id` now belongs to `new_id` (whose KV, if any, goes). False if absent."""
        stem, new_stem = self.file_name(session_id), self.file_name(new_id)
        with self._lock:
            session = self._index.sessions.get(stem)
            if session is None or stem == new_stem:
                return session is not None
            try:  # new_id's KV, if any, goes first: this one's files take its names
                if session.legacy:
                    self._index.drop(new_stem)
                    os.replace(self._index.legacy(stem), self._index.legacy(new_stem))
                else:  # the manifest names its session: written again under the new name
                    m = read_manifest(self._index.manifest(stem))
                    data = manifest_bytes(self.layout, new_id, m["token_ids"], m["chunk_tokens"])
                    self._index.drop(new_stem)
                    write_atomically(self._index.manifest(new_stem), lambda f: f.write(data), sync=False)  # engine thread
                    self._index.manifest(stem).unlink(missing_ok=True)
            except (OSError, ValueError, KeyError, TypeError):
                return False
            del self._index.sessions[stem]
            self._index.nbytes -= session.nbytes
            if not session.legacy:
                session.nbytes = len(data)
            self._index.add(new_stem, session)
            return True

    def expire(self, max_age_seconds: float) -> int:
        """Delete sessions not used for max_age_seconds. Returns how many."""
        cutoff = time.time() - max_age_seconds
        with self._lock:
            old = [stem for stem, s in self._index.sessions.items() if s.used < cutoff]
            for stem in old:
                self._index.drop(stem)
            self.stats.num_expired += len(old)
        return len(old)

    def _enforce_limit(self) -> None:
        """Lock held. Least recently used sessions go first."""
        while self._index.nbytes > self.max_bytes and self._index.sessions:
            self._index.drop(next(iter(self._index.sessions)))
            self.stats.num_evicted += 1
