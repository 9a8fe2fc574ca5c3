"""KV reuse across sessions: a stateless request taking over the KV its conversation left (adopt), and
sessions starting alike sharing that beginning's KV (share_prefix), held once in RAM.

Both look up the store's radix index (engine/kv/prefix_index.py) of every cached conversation's token
ids and act through the store's own operations; docs/ENGINE.md "Prefixes shared across sessions"
describes the policy. Engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.kv.session_kv import common_prefix_length
from engine.kv.store import KVStore

# Sharing pays as soon as it saves a few prefill tokens (~1.3 ms each on 2 cores) against one copy of
# those positions; 16 covers a chat template's default system prompt (~30 tokens for SmolLM2).
MIN_SHARED_TOKENS = 16
# an adopted conversation may have this many tokens (or a quarter of its length) the prompt does not
# continue (its last answer, edited away by the client); more means someone else's branch
_MAX_UNMATCHED_TAIL = 64


class PrefixSharing:
    def __init__(self, store: KVStore, min_tokens: int = MIN_SHARED_TOKENS):
        self.store = store
        self.min_tokens = min_tokens

    def adopt(self, session_id: str, prompt_ids: list[int], accept: Callable[[str], bool]) -> int:
        """A stateless request continues a conversation another request left: if session_id has no KV,
        take over (rename to session_id) the idle accepted session whose tokens best prefix prompt_ids,
        provided the prompt continues it. Returns the matched length, 0 if nothing was adopted."""
        store = self.store
        if store.tier_of(session_id) != "none":
            return 0

        def usable(other: str) -> bool:
            if other == session_id or not accept(other):
                return False
            entry = store.entries.get(other)
            return entry.is_idle if entry is not None else store.on_disk(other)

        src, n = store.index.longest_prefix(prompt_ids, usable)
        if src is None or n < self.min_tokens:
            return 0
        length = len(store.index.tokens(src))
        if length - n > max(_MAX_UNMATCHED_TAIL, length // 4):
            return 0
        return n if store.rename(src, session_id) else 0

    def share_prefix(self, session_id: str, prompt_ids: list[int]) -> int | None:
        """Before the session's turn starts: if another session holds a longer prefix of prompt_ids (by at
        least min_tokens) than this session's own KV, make that prefix a SharedPrefix (held once, read by
        both) and start this session on it. Returns the shared length (0: nothing shared), or None when
        that session's KV is being read back from disk for this: call again after the next notify."""
        store = self.store
        own = store.entries.get(session_id)
        if own is not None and not own.is_idle:
            return 0
        if own is None and store.on_disk(session_id):
            return 0  # its own KV comes back from disk
        own_match = common_prefix_length(own.kv.token_ids, prompt_ids) if own is not None else 0

        def candidate(other: str) -> bool:
            if other == session_id or len(store.index.tokens(other)) < own_match + self.min_tokens:
                return False
            entry = store.entries.get(other)
            return entry.state in ("ram", "restoring") if entry is not None else store.on_disk(other)

        src, n = store.index.longest_prefix(prompt_ids, candidate)
        if src is None or n - own_match < self.min_tokens:
            return 0
        entry = store.entries.get(src)
        if entry is None or entry.state == "restoring":  # on disk: read it back first, then share
            store.restore(src)
            return None if src in store.entries else 0
        src_kv = entry.kv
        n = min(n, common_prefix_length(src_kv.token_ids, prompt_ids), len(prompt_ids) - 1)  # index may be stale
        if n - own_match < self.min_tokens:
            return 0
        reuse = src_kv.prefix is not None and src_kv.prefix_len >= n
        # a new SharedPrefix is a copy beside the source until the source's own buffer shrinks: both must fit
        need = 0 if reuse else src_kv.token_bytes * n
        if not store.budget.make_room(need, exclude=(src, session_id), new_session=own is None):
            return 0
        if reuse:
            shared = src_kv.prefix
        else:
            shared = src_kv.share(n)
            store.budget.add_shared(shared)
        if own is None:
            own = store.new_entry(session_id, store.new_kv(0))
        else:
            own.kv.detach()
            own.kv = store.new_kv(0)
        own.kv.attach(shared, n, n)
        own.is_dirty = True
        store.index.set(session_id, own.kv.token_ids)
        store.stats.shared_hits += 1
        store.stats.shared_tokens += n
        return n
