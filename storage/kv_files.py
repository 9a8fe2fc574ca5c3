"""The disk tier of session KV: one safetensors file per session (format in docs/KV_FORMAT.md).

Files are written and read by streaming each [positions, head_dim] slab straight between the
session's RAM tensor and the file, so a spill or restore never holds a second copy of the KV in
RAM and releases the GIL for the I/O. The result is a standard safetensors file (tensor "kv",
shape [layers, 2, kv_heads, tokens, head_dim]) that the safetensors library reads as well.

Thread-safety: every method may be called from any thread; the index is guarded by a lock.
Disk I/O happens in write() and read(); callers keep them off the event loop and the model thread.
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
import xxhash

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
_MAX_HEADER = 16 << 20  # bytes; token ids of a 100k-token session fit easily
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class KVFileInvalid(Exception):
    """A KV file that must not be used. `reason` is one of: missing, truncated, corrupt,
    format_version, model_mismatch, layout_mismatch."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class KVLayout:
    """What every file of this server must match: [layers, 2, kv_heads, tokens, head_dim] of dtype."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    fingerprint: str  # the model's (weights, config, tokenizer, chat template)

    def token_bytes(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()


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

    def file_name(self, key: str) -> str:
        """Never derived from client text directly: a hash of the session key."""
        return hashlib.sha256(key.encode()).hexdigest()[:40] + SUFFIX

    def contains(self, key: str) -> bool:
        with self._lock:
            return self.file_name(key) in self._index

    def nbytes(self, key: str) -> int:
        with self._lock:
            entry = self._index.get(self.file_name(key))
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
        """(session key, token ids) of every file written for this model (headers only; at start-up,
        so the engine's prefix index covers the disk tier too). Unreadable headers are skipped here
        and rejected when read."""
        found = []
        with self._lock:
            names = list(self._index)
        for name in names:
            try:
                with open(self.directory / name, "rb") as f:
                    (header_len,) = struct.unpack("<Q", f.read(8))
                    if header_len > _MAX_HEADER:
                        continue
                    meta = json.loads(f.read(header_len))["__metadata__"]
                key = meta["session_key"]
                if meta.get("model_fingerprint") == self.layout.fingerprint and self.file_name(key) == name:
                    found.append((key, json.loads(meta["token_ids"])))
            except (OSError, ValueError, KeyError, TypeError, struct.error):
                continue
        return found

    # ---- write ----

    def write(self, key: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int:
        """Atomically store KV covering `token_ids`: `data` [layers, 2, kv_heads, capacity, head_dim]
        (positions < len(token_ids) are written), or consecutive pieces [layers, 2, kv_heads, n_i, head_dim]
        with sum(n_i) == len(token_ids) (a shared prefix and a session's own part).

        `data` must not change during the call. Returns bytes written. Deletes least recently used
        files if the tier is over max_bytes.
        """
        start = time.perf_counter()
        n = len(token_ids)
        L = self.layout
        pieces = [data[:, :, :, :n]] if isinstance(data, torch.Tensor) else data
        assert sum(p.shape[3] for p in pieces) == n
        for p in pieces:
            assert p.shape[:3] == (L.num_layers, 2, L.num_kv_heads) and p.shape[4] == L.head_dim and p.dtype == L.dtype
        slabs = [p[layer, kv, head] for layer in range(L.num_layers) for kv in range(2)
                 for head in range(L.num_kv_heads) for p in pieces if p.shape[3]]
        checksum = xxhash.xxh3_128()
        for slab in slabs:
            checksum.update(_raw(slab))
        payload = n * L.token_bytes()
        metadata = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": L.fingerprint,
            "dtype": _DTYPES[L.dtype],
            "shape": json.dumps([L.num_layers, 2, L.num_kv_heads, n, L.head_dim]),
            "token_ids": json.dumps(token_ids),
            "session_key": key,
            "checksum": "xxh3_128:" + checksum.hexdigest(),
        }
        header = {
            "__metadata__": metadata,
            "kv": {"dtype": _DTYPES[L.dtype], "shape": [L.num_layers, 2, L.num_kv_heads, n, L.head_dim],
                   "data_offsets": [0, payload]},
        }
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)  # the spec pads the header to 8-byte alignment
        name = self.file_name(key)
        final = self.directory / name
        tmp = self.directory / f"{name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(struct.pack("<Q", len(header_bytes)))
                f.write(header_bytes)
                for slab in slabs:
                    f.write(_raw(slab))
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
        size = 8 + len(header_bytes) + payload
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

    def read_into(self, key: str, allocate) -> tuple[torch.Tensor, list[int]]:
        """Load and verify the file of `key`. `allocate(num_tokens)` returns the destination tensor
        [layers, 2, kv_heads, capacity >= num_tokens, head_dim]; the payload is read straight into it.

        Raises KVFileInvalid (the file is then deleted) when the file must not be used.
        """
        start = time.perf_counter()
        name = self.file_name(key)
        path = self.directory / name
        try:
            data, token_ids, size = self._read_verified(path, allocate)
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

    def _read_verified(self, path: Path, allocate) -> tuple[torch.Tensor, list[int], int]:
        L = self.layout
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise KVFileInvalid("missing") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise KVFileInvalid("truncated", "no header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise KVFileInvalid("truncated", "header")
            try:
                header = json.loads(f.read(header_len))
                meta = header["__metadata__"]
                version = meta["format_version"]
                fingerprint = meta["model_fingerprint"]
                token_ids = json.loads(meta["token_ids"])
                shape = json.loads(meta["shape"])
                checksum = meta["checksum"]
                tensor = header["kv"]
            except (ValueError, KeyError, TypeError) as exc:
                raise KVFileInvalid("corrupt", f"header: {exc}") from None
            if version != FORMAT_VERSION:
                raise KVFileInvalid("format_version", str(version))
            if fingerprint != L.fingerprint:
                raise KVFileInvalid("model_mismatch")
            n = len(token_ids)
            expected = [L.num_layers, 2, L.num_kv_heads, n, L.head_dim]
            if shape != expected or tensor.get("shape") != expected or tensor.get("dtype") != _DTYPES[L.dtype]:
                raise KVFileInvalid("layout_mismatch", f"{tensor.get('dtype')} {tensor.get('shape')}")
            payload = n * L.token_bytes()
            if tensor.get("data_offsets") != [0, payload] or not all(isinstance(t, int) for t in token_ids):
                raise KVFileInvalid("corrupt", "offsets")
            if size != 8 + header_len + payload:
                raise KVFileInvalid("truncated", f"{size} bytes, expected {8 + header_len + payload}")
            data = allocate(n)
            digest = xxhash.xxh3_128()
            for layer in range(L.num_layers):
                for kv in range(2):
                    for head in range(L.num_kv_heads):
                        slab = _raw(data[layer, kv, head, :n])
                        if f.readinto(slab) != slab.nbytes:
                            raise KVFileInvalid("truncated", "payload")
                        digest.update(slab)
            if "xxh3_128:" + digest.hexdigest() != checksum:
                raise KVFileInvalid("corrupt", "checksum")
        return data, token_ids, size

    # ---- delete ----

    def delete(self, key: str) -> bool:
        name = self.file_name(key)
        with self._lock:
            existed = self._index.pop(name, None) is not None
        (self.directory / name).unlink(missing_ok=True)
        return existed

    def rename(self, key: str, new_key: str) -> bool:
        """The file of `key` now belongs to `new_key` (its contents name no key). False if absent."""
        name, new_name = self.file_name(key), self.file_name(new_key)
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


def _raw(slab: torch.Tensor):
    """Bytes of a contiguous [tokens, head_dim] slab, as a writable numpy view (no copy; any dtype)."""
    assert slab.is_contiguous()
    return slab.view(torch.uint8).numpy()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
