"""A cluster replica's tiers below RAM as one: its local disk (storage/kv_files.py) and the shared tier on
Redis (storage/kv_redis.py), which every replica reads. The engine sees one DiskTier.

- write: to both (the shared tier's chunks Redis holds already are not sent again); it fails only if
  both fail. A Redis that does not answer costs nothing but the shared copy.
- read: the shared tier first, as it holds the latest KV whichever replica served the session last (a
  local copy may be older: written before the session moved away); the local disk when Redis does not
  have the session (evicted, flushed) or does not answer, or its copy is unusable.
- delete and rename go to both; expiry is local (Redis keys carry their TTL).
- sizes and counts are the local tier's; the shared tier's counters are `shared_stats`; readiness of
  each: check_writable() (local) and shared.ping().
"""

from __future__ import annotations

import logging

import torch

from storage.errors import KVFileInvalid
from storage.kv_files import KVFileStore
from storage.kv_redis import RedisKVStore, RedisUnavailable

log = logging.getLogger(__name__)


class KVTiers:
    def __init__(self, local: KVFileStore, shared: RedisKVStore):
        self.local, self.shared = local, shared
        self.shared_stats = shared.stats

    @property
    def stats(self):
        return self.local.stats

    @property
    def max_bytes(self) -> int:
        return self.local.max_bytes

    @property
    def num_sessions(self) -> int:
        return self.local.num_sessions

    @property
    def num_chunks(self) -> int:
        return self.local.num_chunks

    @property
    def total_bytes(self) -> int:
        return self.local.total_bytes

    def contains(self, session_id: str) -> bool:
        return self.local.contains(session_id) or self.shared.contains(session_id)

    def nbytes(self, session_id: str) -> int:
        """The larger of the two copies, in RAM terms: a restore reserves room for whichever it reads."""
        return max(self.local.nbytes(session_id), self.shared.nbytes(session_id))

    def scan_prefixes(self) -> list[tuple[str, list[int]]]:
        return self.local.scan_prefixes()

    def write(self, session_id: str, data: torch.Tensor | list[torch.Tensor], token_ids: list[int]) -> int:
        written, failure = 0, None
        try:
            written += self.local.write(session_id, data, token_ids)
        except Exception as exc:  # noqa: BLE001 - the shared copy may still be written
            failure = exc
        try:
            written += self.shared.write(session_id, data, token_ids)
        except RedisUnavailable as exc:
            log.warning("shared KV tier: session not written (%s)", exc)
            if failure is not None:
                raise failure from exc
        if failure is not None and not written:
            raise failure
        return written

    def restore_into(self, session_id: str, allocate) -> tuple[torch.Tensor, list[int], str]:
        try:
            if self.shared.contains(session_id):
                return (*self.shared.read_into(session_id, allocate), "shared")
        except KVFileInvalid as exc:  # unusable or unreachable: the local copy, if any
            if not self.local.contains(session_id):
                raise
            log.info("shared KV tier: %s; reading the local copy", exc)
        return self.local.restore_into(session_id, allocate)

    def delete(self, session_id: str) -> bool:
        found = self.local.delete(session_id)
        try:
            found = self.shared.delete(session_id) or found
        except RedisUnavailable:
            pass  # its TTL removes it
        return found

    def rename(self, session_id: str, new_id: str) -> bool:
        renamed = self.local.rename(session_id, new_id)
        try:
            renamed = self.shared.rename(session_id, new_id) or renamed
        except RedisUnavailable:
            pass
        return renamed

    def expire(self, max_age_seconds: float) -> int:
        return self.local.expire(max_age_seconds)

    def check_writable(self) -> bool:
        """For /readyz: the local disk takes writes (the shared tier answers: self.shared.ping())."""
        return self.local.check_writable()

    @property
    def write_error(self) -> str | None:
        return self.local.write_error
