"""Per-session KV cache: an optional shared prefix plus one contiguous buffer of the session's own.

Layout of every buffer: data[layer, 0=key|1=value, kv_head, position, head_dim], float32 or float16
(engine/kv/config.py KV_DTYPES; float16 halves RAM, disk and the attention's memory traffic).

A session whose conversation starts like another's (the same long system prompt, or a stateless
request branching from an earlier one) reads the first `prefix_len` positions from a SharedPrefix:
an immutable buffer held once in RAM and referenced by every session that starts with it. The
session's own buffer holds positions prefix_len.. at index position - prefix_len; it is read by
attention as a strided view (no copy), extended by writing new positions, truncated in O(1).
"""

from __future__ import annotations

import torch

# Capacity granularity in tokens: little slack (46 KB per token for SmolLM2 fp32), few reallocations
# because a turn reserves prompt + max_tokens before it starts.
_CAPACITY_STEP = 256


class SharedPrefix:
    """KV of a token prefix, read by several sessions; never written after creation.

    refs counts the SessionKVs reading it; it is freed when none reads it any more (the store's budget
    holds it by a weak reference)."""

    def __init__(self, data: torch.Tensor, token_ids: list[int]):
        assert data.shape[3] == len(token_ids)
        self.data = data  # [layers, 2, kv_heads, len(token_ids), head_dim]
        self.token_ids = tuple(token_ids)
        self.refs = 0

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class SessionKV:
    """KV of one conversation, covering exactly `token_ids` (position i holds token_ids[i])."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, capacity: int = 0):
        self.shape = (num_layers, 2, num_kv_heads, head_dim)
        self.dtype = dtype
        self.token_ids: list[int] = []
        self.prefix: SharedPrefix | None = None
        self.prefix_len = 0  # positions read from prefix (<= its length)
        self.data = self.alloc(capacity)  # own positions prefix_len.. at index position - prefix_len
        # (n, logits [vocab] float32): the model's output after the first n positions, kept from the last
        # prompt a turn prefilled, so that a new answer to that prompt (regenerate) needs no forward pass.
        # Valid while token_ids[:n] stay; ~4 bytes x vocab (0.2-1 MB), not counted in nbytes.
        self.last_logits: tuple[int, torch.Tensor] | None = None

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def own_length(self) -> int:
        return self.length - self.prefix_len

    @property
    def capacity(self) -> int:
        """Positions this KV can hold without growing (shared prefix included)."""
        return self.prefix_len + self.data.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes of the own buffer, by capacity (what RAM accounting must count); the shared prefix
        is counted once by its owner."""
        return self.data.numel() * self.data.element_size()

    @property
    def token_bytes(self) -> int:
        layers, _, heads, dim = self.shape
        return layers * 2 * heads * dim * self.data.element_size()

    def bytes_for(self, num_tokens: int) -> int:
        """Bytes of an own buffer with room for num_tokens positions in all (256-token steps)."""
        return self.token_bytes * _round_up(max(0, num_tokens - self.prefix_len))

    def ensure_capacity(self, num_tokens: int) -> None:
        """Grow to exactly bytes_for(num_tokens); while copying, old and new buffers both exist."""
        if num_tokens <= self.capacity:
            return
        grown = self.alloc(num_tokens - self.prefix_len)
        grown[:, :, :, : self.own_length].copy_(self.data[:, :, :, : self.own_length])
        self.data = grown

    def shrink_to_fit(self) -> int:
        """Drop spare capacity (a turn reserves prompt + max_tokens); returns bytes freed."""
        before = self.nbytes
        if self.bytes_for(self.length) < before:
            smaller = self.alloc(self.own_length)
            smaller.copy_(self.data[:, :, :, : smaller.shape[3]])
            self.data = smaller
        return before - self.nbytes

    def truncate(self, num_tokens: int) -> None:
        assert 0 <= num_tokens <= self.length
        if num_tokens < self.prefix_len:  # keeping less than the shared part: copy that much, own it
            own = self.alloc(max(num_tokens, self.data.shape[3]))
            own[:, :, :, :num_tokens].copy_(self.prefix.data[:, :, :, :num_tokens])
            self.detach()
            self.data = own
        del self.token_ids[num_tokens:]
        if self.last_logits is not None and self.last_logits[0] > num_tokens:
            self.last_logits = None

    def logits_after(self, num_tokens: int) -> torch.Tensor | None:
        """The kept logits after exactly the first num_tokens positions, if these are the ones kept."""
        if self.last_logits is not None and self.last_logits[0] == num_tokens <= self.length:
            return self.last_logits[1]
        return None

    def attach(self, prefix: SharedPrefix, num_tokens: int, capacity: int) -> None:
        """Start this (empty, unshared) KV with the first num_tokens of prefix, room for capacity."""
        assert self.length == 0 and self.prefix is None and 0 < num_tokens <= len(prefix.token_ids)
        prefix.refs += 1
        self.prefix, self.prefix_len = prefix, num_tokens
        self.token_ids = list(prefix.token_ids[:num_tokens])
        self.data = self.alloc(capacity - num_tokens)

    def detach(self) -> None:
        """Stop reading the shared prefix (the caller has copied or dropped what it covered)."""
        if self.prefix is not None:
            self.prefix.refs -= 1
            self.prefix, self.prefix_len = None, 0

    def share(self, num_tokens: int) -> SharedPrefix:
        """Move this KV's first num_tokens into a new SharedPrefix and read them from there: the same
        RAM in all (a copy of the positions, then a smaller own buffer of the same spare capacity)."""
        assert 0 < num_tokens <= self.length
        shared = SharedPrefix(self.positions(0, num_tokens).clone(), self.token_ids[:num_tokens])
        rest = self.positions(num_tokens, self.length)
        own = self.alloc(self.capacity - num_tokens)
        own[:, :, :, : rest.shape[3]].copy_(rest)
        token_ids = self.token_ids
        self.detach()
        shared.refs += 1
        self.prefix, self.prefix_len, self.data, self.token_ids = shared, num_tokens, own, token_ids
        return shared

    def positions(self, start: int, end: int) -> torch.Tensor:
        """[layers, 2, kv_heads, end - start, head_dim]: a view when within one segment, else a copy."""
        p = self.prefix_len
        if start >= p:
            return self.data[:, :, :, start - p:end - p]
        if end <= p:
            return self.prefix.data[:, :, :, start:end]
        return torch.cat([self.prefix.data[:, :, :, start:p], self.data[:, :, :, : end - p]], dim=3)

    def pieces(self) -> list[torch.Tensor]:
        """The whole KV as consecutive views [layers, 2, kv_heads, n_i, head_dim] (for writing to disk)."""
        own = self.data[:, :, :, : self.own_length]
        return [self.prefix.data[:, :, :, : self.prefix_len], own] if self.prefix is not None else [own]

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values: [num_kv_heads, n, head_dim] for positions start..start+n (never shared ones)."""
        assert start >= self.prefix_len
        end = start + keys.shape[1]
        assert end <= self.capacity
        own_start, own_end = start - self.prefix_len, end - self.prefix_len
        self.data[layer, 0, :, own_start:own_end].copy_(keys)
        self.data[layer, 1, :, own_start:own_end].copy_(values)

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [num_kv_heads, end, head_dim] for positions 0..end (views if unshared)."""
        p = self.prefix_len
        if self.prefix is None:
            return self.data[layer, 0, :, :end], self.data[layer, 1, :, :end]
        shared = self.prefix.data[layer, :, :, : min(p, end)]
        if end <= p:
            return shared[0], shared[1]
        keys = torch.cat([shared[0], self.data[layer, 0, :, : end - p]], dim=1)  # a copy: prefill only
        values = torch.cat([shared[1], self.data[layer, 1, :, : end - p]], dim=1)
        return keys, values

    def alloc(self, num_tokens: int) -> torch.Tensor:
        """A new (uninitialised) buffer of this layout with capacity for num_tokens."""
        layers, two, heads, dim = self.shape
        return torch.empty((layers, two, heads, _round_up(num_tokens), dim), dtype=self.dtype)


def _round_up(num_tokens: int) -> int:
    return -(-num_tokens // _CAPACITY_STEP) * _CAPACITY_STEP


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
