"""The shared KV tier of a cluster: the chunks and manifests of storage/kv_format.py as Redis values, so
that any replica reads the KV another one wrote (docs/KV_FORMAT.md, "The shared tier").

    <prefix>chunk:<chunk name>     a chunk file's bytes; immutable, its name a hash of what it holds, so
                                   two replicas writing it is harmless and sessions that begin alike share it
    <prefix>head:<stem>            a session's manifest; stem = sha256(session key)[:40]

Every key has the tier's TTL, refreshed when written or found by a write; Redis itself bounds the memory
(`maxmemory` with an LRU policy: scripts/redis.sh), so a head may outlive a chunk it names: reading it
then fails as `missing` and the session is recomputed, never an error for the person chatting.

Blocking (redis-py's client, its own connection pool), for the store's I/O thread; contains() and
nbytes() also run on the engine thread, with a short socket timeout. While Redis does not answer, every
call fails fast (the tier is `down` for `retry_seconds`) and the replica goes on with its local tiers.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from dataclasses import dataclass

import redis
import torch

from storage.errors import KVFileInvalid
from storage.kv_format import (KVLayout, chunk_names, manifest_bytes, parse_manifest, read_session, slice_pieces,
                               write_chunk)

DEFAULT_CHUNK_TOKENS = 256


@dataclass
class SharedTierStats:
    num_written: int = 0  # sessions written
    num_read: int = 0
    chunks_written: int = 0
    chunks_reused: int = 0  # found in Redis already (this session's, a branch's, another replica's)
    bytes_written: int = 0
    bytes_read: int = 0
    head_hits: int = 0  # reads that found the session's manifest
    head_misses: int = 0
    chunk_misses: int = 0  # a manifest named a chunk Redis no longer holds (evicted): recomputed
    num_invalid: int = 0
    num_errors: int = 0  # calls that failed because Redis did not answer
    is_down: bool = False
    last_error: str = ""


class RedisKVStore:
    def __init__(self, url: str, layout: KVLayout, ttl_seconds: float, prefix: str = "kvchat:",
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, socket_timeout: float = 0.5, retry_seconds: float = 5.0):
        self.layout = layout
        self.prefix = prefix
        self.chunk_tokens = chunk_tokens
        self.ttl_ms = int(ttl_seconds * 1000)
        self.retry_seconds = retry_seconds
        self.stats = SharedTierStats()
        self.max_bytes = 0  # Redis's maxmemory, read by info()
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        self._lock = threading.Lock()  # guards stats and the down state
        self._down_until = 0.0

    # ---- keys ----

    def _head(self, session_id: str) -> str:
        return f"{self.prefix}head:{hashlib.sha256(session_id.encode()).hexdigest()[:40]}"

    def _chunk(self, name: str) -> str:
        return f"{self.prefix}chunk:{name}"

    # ---- availability ----

    def _call(self, fn):
        """fn(client), or RedisUnavailable at once while the tier is down; a failure to reach Redis marks
        it down (a command Redis refuses raises redis.ResponseError as is)."""
        if time.monotonic() < self._down_until:
            raise RedisUnavailable(self.stats.last_error)
        try:
            result = fn(self._client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            with self._lock:
                self.stats.num_errors += 1
                self.stats.is_down, self.stats.last_error = True, f"{type(exc).__name__}: {exc}"
                self._down_until = time.monotonic() + self.retry_seconds
            raise RedisUnavailable(self.stats.last_error) from exc
        if self.stats.is_down:
            with self._lock:
                self.stats.is_down = False
        return result

    def ping(self) -> bool:
        """True when Redis answers (tried even while the tier is marked down: recovery shows at once)."""
        self._down_until = 0.0
        try:
            return bool(self._call(lambda r: r.ping()))
        except RedisUnavailable:
            return False

    def info(self) -> dict:
        """Redis's own figures for /metrics: memory used and bound, hits, misses, evictions."""
        memory, stats = self._call(lambda r: (r.info("memory"), r.info("stats")))
        self.max_bytes = int(memory.get("maxmemory", 0))
        return {"used_bytes": int(memory.get("used_memory", 0)), "max_bytes": self.max_bytes,
                "policy": memory.get("maxmemory_policy", ""), "keyspace_hits": int(stats.get("keyspace_hits", 0)),
                "keyspace_misses": int(stats.get("keyspace_misses", 0)),
                "evicted_keys": int(stats.get("evicted_keys", 0))}

    # ---- queries ----

    def contains(self, session_id: str) -> bool:
        try:
            return bool(self._call(lambda r: r.exists(self._head(session_id))))
        except RedisUnavailable:
            return False

    def nbytes(self, session_id: str) -> int:
        """The session's KV in RAM terms (its tokens x bytes per token); 0 if absent or unreachable."""
        try:
            tokens = self._call(lambda r: r.hget(self._head(session_id), "tokens"))
        except RedisUnavailable:
            return 0
        return int(tokens) * self.layout.token_bytes() if tokens is not None else 0

    # ---- write ----

    def write(self, session_id: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int:
        """Store KV covering token_ids (as KVFileStore.write): the chunks Redis lacks, then the manifest.
        Returns bytes sent. Raises RedisUnavailable."""
        pieces = [data[:, :, :, :len(token_ids)]] if isinstance(data, torch.Tensor) else data
        C = self.chunk_tokens
        names = chunk_names(self.layout.fingerprint, self.layout.dtype_name, token_ids, C)

        def present(r):
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.pexpire(self._chunk(name), self.ttl_ms)  # found: its TTL is refreshed
            return pipe.execute()

        found = self._call(present)
        sent = 0
        for i, name in enumerate(names):
            if found[i]:
                continue
            part = token_ids[i * C:(i + 1) * C]
            buf = io.BytesIO()
            write_chunk(buf, self.layout, slice_pieces(pieces, i * C, len(part)), part, names[i - 1] if i else "")
            value = buf.getbuffer()
            self._call(lambda r: r.set(self._chunk(name), value, px=self.ttl_ms))
            sent += len(value)
        manifest = manifest_bytes(self.layout, session_id, token_ids, C)
        head = self._head(session_id)

        def put_head(r):
            pipe = r.pipeline(transaction=True)
            pipe.delete(head)
            pipe.hset(head, mapping={"manifest": manifest, "tokens": len(token_ids)})
            pipe.pexpire(head, self.ttl_ms)
            pipe.execute()

        self._call(put_head)
        sent += len(manifest)
        reused = sum(1 for f in found if f)
        with self._lock:
            self.stats.num_written += 1
            self.stats.chunks_written += len(names) - reused
            self.stats.chunks_reused += reused
            self.stats.bytes_written += sent
        return sent

    # ---- read ----

    def read_into(self, session_id: str, allocate) -> tuple[torch.Tensor, list[int]]:
        """Load and verify the session's KV (as KVFileStore.read_into). Raises KVFileInvalid (`missing`
        for an absent manifest or an evicted chunk: the manifest is then deleted; a bad chunk is deleted
        too) or RedisUnavailable."""
        head = self._head(session_id)

        def get_head(r):
            pipe = r.pipeline(transaction=False)
            pipe.hget(head, "manifest")
            pipe.pexpire(head, self.ttl_ms)
            return pipe.execute()[0]

        raw = self._call(get_head)
        try:
            if raw is None:
                raise KVFileInvalid("missing")
            with self._lock:
                self.stats.head_hits += 1
            try:
                m = parse_manifest(raw)
            except (ValueError, KeyError, TypeError) as exc:
                raise KVFileInvalid("corrupt", f"manifest: {exc}") from None

            def fetch(name: str):
                value = self._call(lambda r: r.get(self._chunk(name)))
                if value is None:
                    with self._lock:
                        self.stats.chunk_misses += 1
                    raise KVFileInvalid("missing")
                return io.BytesIO(value), len(value)

            data, token_ids, size = read_session(self.layout, m, allocate, fetch)
        except RedisUnavailable:
            raise
        except KVFileInvalid as exc:
            with self._lock:
                if raw is None:
                    self.stats.head_misses += 1
                else:
                    self.stats.num_invalid += 1
            if raw is not None:  # the manifest, and a chunk found bad, go
                keys = [head] + ([self._chunk(exc.chunk)] if exc.chunk else [])
                self._call(lambda r: r.delete(*keys))
            raise
        with self._lock:
            self.stats.num_read += 1
            self.stats.bytes_read += size
        return data, token_ids

    # ---- delete ----

    def delete(self, session_id: str) -> bool:
        """Forget the session's manifest (its chunks, perhaps shared, go by TTL or LRU)."""
        return bool(self._call(lambda r: r.delete(self._head(session_id))))

    def rename(self, session_id: str, new_id: str) -> bool:
        """The KV of session_id now belongs to new_id (whose KV, if any, goes). False if absent."""
        old, new = self._head(session_id), self._head(new_id)
        if old == new:
            return self.contains(session_id)
        try:
            self._call(lambda r: r.rename(old, new))
        except redis.ResponseError:  # no such key
            return False
        return True


class RedisUnavailable(KVFileInvalid):
    """Redis did not answer (or refused the command): the tier is skipped for now."""

    def __init__(self, detail: str = ""):
        super().__init__("unavailable", detail)
