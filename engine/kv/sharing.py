"""KV reuse across sessions, part of the KV store (engine/kv/store.py): a stateless request taking
over the KV its conversation left, and sessions starting alike sharing that beginning's KV.

Both look up the store's radix index (engine/kv/prefix_index.py) of every cached conversation's
token ids; docs/ENGINE.md "Prefixes shared across sessions" describes the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.kv.session_kv import common_prefix_length

if TYPE_CHECKING:
    from engine.kv.store import KVStore

# Sharing pays as soon as it saves a few prefill tokens (~1.3 ms each on 2 cores) against one copy of
# those positions; 16 covers a chat template's default system prompt (~30 tokens for SmolLM2).
MIN_SHARED_TOKENS = 16


class PrefixSharing:
    """Mixed into KVStore; uses its entries, index, disk tier and RAM accounting."""

    def adopt(self: KVStore, key: str, prompt_ids: list[int], accept: Callable[[str], bool], min_tokens: int = 16) -> int:
        """A stateless request continues a conversation another request left: if `key` has no KV, take
        over (rename to `key`) the idle accepted entry whose tokens best prefix prompt_ids, provided the
        prompt continues it (its unmatched tail is short: not someone else's branch). Returns the
        matched length, 0 if nothing was adopted."""
        if self.tier_of(key) != "none":
            return 0

        def usable(other: str) -> bool:
            if other == key or not accept(other):
                return False
            entry = self._entries.get(other)
            if entry is None:
                return self.disk is not None and self.disk.contains(other)
            return not entry.is_in_use and entry.state == "ram"

        src, n = self.index.longest_prefix(prompt_ids, usable)
        if src is None or n < min_tokens:
            return 0
        length = len(self.index.tokens(src))
        if length - n > max(64, length // 4):
            return 0
        entry = self._entries.pop(src, None)
        if entry is not None:
            self._entries[key] = entry
        elif not self.disk.rename(src, key):
            return 0
        self.index.set(key, self.index.tokens(src))
        self.index.remove(src)
        return n

    def share_prefix(self: KVStore, key: str, prompt_ids: list[int],
                     min_tokens: int = MIN_SHARED_TOKENS) -> int | None:
        """Before `key`'s turn starts: if another session holds a longer prefix of prompt_ids (by at
        least min_tokens) than `key`'s own KV, make that prefix a SharedPrefix (held once, read by
        both) and start `key` on it. Returns the shared length (0: nothing shared), or None when that
        session's KV is being read back from disk for this: call again after the next notify."""
        own = self._entries.get(key)
        if own is not None and (own.is_in_use or own.state != "ram"):
            return 0
        if own is None and self.disk is not None and self.disk.contains(key):
            return 0  # its own KV comes back from disk
        own_match = common_prefix_length(own.kv.token_ids, prompt_ids) if own is not None else 0

        def candidate(other: str) -> bool:
            if other == key or len(self.index.tokens(other)) < own_match + min_tokens:
                return False
            entry = self._entries.get(other)
            if entry is None:
                return self.disk is not None and self.disk.contains(other)
            return entry.state in ("ram", "restoring")
        src, n = self.index.longest_prefix(prompt_ids, candidate)
        if src is None or n - own_match < min_tokens:
            return 0
        entry = self._entries.get(src)
        if entry is None or entry.state == "restoring":  # on disk: read it back first, then share
            if entry is None:
                self._start_restore(src)
            return None if src in self._entries else 0
        src_kv = entry.kv
        n = min(n, common_prefix_length(src_kv.token_ids, prompt_ids), len(prompt_ids) - 1)  # index may be stale
        if n - own_match < min_tokens:
            return 0
        reuse = src_kv.prefix is not None and src_kv.prefix_len >= n
        # a new SharedPrefix is a copy beside the source until the source's own buffer shrinks: both must fit
        if not self._make_room(0 if reuse else src_kv.token_bytes * n, exclude=(src, key), new_session=own is None):
            return 0
        if reuse:
            shared = src_kv.prefix
        else:
            shared = src_kv.share(n)
            self._shared.add(shared)
        if own is None:
            own = self._new_entry(key)
        else:
            own.kv.detach()
            own.kv = self._new_kv(0)
        own.kv.attach(shared, n, n)
        own.is_dirty = True
        self.index.set(key, own.kv.token_ids)
        self.stats.shared_hits += 1
        self.stats.shared_tokens += n
        return n

