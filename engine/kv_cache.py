"""Per-session KV cache: one contiguous tensor per session, grown in place.

Layout: data[layer, 0=key|1=value, kv_head, position, head_dim], capacity >= length.
A session's cache can be read by attention as a strided view (no copy), extended by
writing new positions, truncated to a prefix in O(1), and saved as one slice.
"""

from __future__ import annotations

import torch

# Capacity granularity in tokens: little slack (46 KB per token for SmolLM2 fp32), few reallocations
# because a turn reserves prompt + max_tokens before it starts.
_CAPACITY_STEP = 256


class SessionKV:
    """KV of one conversation, covering exactly `token_ids` (position i holds token_ids[i])."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, capacity: int = 0):
        self.shape = (num_layers, 2, num_kv_heads, head_dim)
        self.dtype = dtype
        self.token_ids: list[int] = []
        self.data = self.alloc(capacity)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def capacity(self) -> int:
        return self.data.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes held, by capacity (what RAM accounting must count), not by length."""
        return self.data.numel() * self.data.element_size()

    @property
    def token_bytes(self) -> int:
        layers, _, heads, dim = self.shape
        return layers * 2 * heads * dim * self.data.element_size()

    def bytes_for(self, num_tokens: int) -> int:
        """Bytes of a buffer with room for num_tokens (capacity is rounded up to a 256-token step)."""
        return self.token_bytes * _round_up(num_tokens)

    def ensure_capacity(self, num_tokens: int) -> None:
        """Grow to exactly bytes_for(num_tokens); while copying, old and new buffers both exist."""
        if num_tokens <= self.capacity:
            return
        grown = self.alloc(num_tokens)
        grown[:, :, :, : self.length].copy_(self.data[:, :, :, : self.length])
        self.data = grown

    def shrink_to_fit(self) -> int:
        """Drop spare capacity (a turn reserves prompt + max_tokens); returns bytes freed."""
        before = self.nbytes
        if self.bytes_for(self.length) < before:
            smaller = self.alloc(self.length)
            smaller.copy_(self.data[:, :, :, : smaller.shape[3]])
            self.data = smaller
        return before - self.nbytes

    def truncate(self, num_tokens: int) -> None:
        assert 0 <= num_tokens <= self.length
        del self.token_ids[num_tokens:]

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values: [num_kv_heads, n, head_dim] for positions start..start+n."""
        end = start + keys.shape[1]
        assert end <= self.capacity
        self.data[layer, 0, :, start:end].copy_(keys)
        self.data[layer, 1, :, start:end].copy_(values)

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [num_kv_heads, end, head_dim] for positions 0..end (strided views)."""
        return self.data[layer, 0, :, :end], self.data[layer, 1, :, :end]

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
