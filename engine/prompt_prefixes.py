"""Which beginnings of prompts the engine has recently been asked for: a bounded LRU of hashes of
16-token blocks, each chained to the blocks before it (so a block matches only after the same prefix).

Admission uses it to predict how much of a new prompt will be computed rather than reused: a prefix
another recent turn shares (a conversation's history, a common system prompt) will be held in the KV
store by the time this turn starts, as a session's own KV or a shared prefix. A prediction only; the
turn's real cached length is known when it starts. Not thread-safe: its owner holds a lock.
"""

from __future__ import annotations

from collections import OrderedDict

BLOCK = 16  # tokens per hashed block; as engine/kv/sharing.py's MIN_SHARED_TOKENS, smaller shares do not pay
MAX_BLOCKS = 1 << 16  # hashes remembered (~8 MB); least recently seen go first


class PromptPrefixes:
    def __init__(self, max_blocks: int = MAX_BLOCKS):
        self.max_blocks = max_blocks
        self._seen: OrderedDict[int, None] = OrderedDict()

    def known_prefix(self, prompt_ids: list[int]) -> int:
        """Tokens at the start of prompt_ids, in whole blocks, that a recently seen prompt began with."""
        matched = 0
        for key in _chain(prompt_ids):
            if key not in self._seen:
                break
            matched += BLOCK
        return matched

    def add(self, prompt_ids: list[int]) -> None:
        for key in _chain(prompt_ids):
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self.max_blocks:
            self._seen.popitem(last=False)


def _chain(prompt_ids: list[int]):
    h = 0
    for start in range(0, len(prompt_ids) - BLOCK + 1, BLOCK):
        h = hash((h, tuple(prompt_ids[start:start + BLOCK])))
        yield h
