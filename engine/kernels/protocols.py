"""What the kernel faces read from objects that other packages own, stated as structural types.

engine/kv's SessionKV satisfies SequenceKV and engine/model's LayerWeights satisfies DecoderWeights without
either side importing the other: engine/kernels imports nothing of engine.kv, engine.model or the engine core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from engine.kernels.linear import Linear


class KVPrefix(Protocol):
    """A read-only KV segment shared by several sequences."""

    @property
    def data(self) -> torch.Tensor:
        """[layers, 2 (key, value), kv_heads, capacity, head_dim], contiguous; never written."""


class SequenceKV(Protocol):
    """The KV cache of one sequence, as attention reads and writes it.

    Positions 0 .. prefix_len - 1 are in prefix.data (when prefix is not None), positions prefix_len .. in
    data at index position - prefix_len. Both buffers hold `dtype` (float32 or float16) in the layout
    [layers, 2 (key, value), kv_heads, capacity, head_dim], contiguous. Attention writes a step's new keys
    and values at positions length .. (the caller has made room for them) and reads everything before.
    """

    @property
    def data(self) -> torch.Tensor:
        """The sequence's own buffer."""

    @property
    def prefix(self) -> KVPrefix | None:
        """The shared segment, or None."""

    @property
    def prefix_len(self) -> int:
        """Positions read from prefix."""

    @property
    def length(self) -> int:
        """Positions cached before the step's new tokens."""

    @property
    def own_length(self) -> int:
        """length - prefix_len: the own buffer's index of the first new token."""

    @property
    def dtype(self) -> torch.dtype:
        """What both buffers hold."""

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values [kv_heads, n, head_dim] to positions start .. start + n - 1 (start >= prefix_len)."""

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [kv_heads, end, head_dim] of positions 0 .. end - 1, in `dtype`."""


class DecoderWeights(Protocol):
    """One decoder layer's weights, as engine/kernels/fused_layers.py reads them: RMSNorm vectors [hidden]
    (float32, contiguous) and the layer's four matrices (qkv fused, o, gate_up fused, down); v apart when
    its block type differs from q's and k's (then qkv holds q and k only); the families' extra norms and
    sliding window."""

    @property
    def ln1(self) -> torch.Tensor: ...

    @property
    def ln2(self) -> torch.Tensor: ...

    @property
    def qkv(self) -> Linear: ...

    @property
    def o(self) -> Linear: ...

    @property
    def gate_up(self) -> Linear: ...

    @property
    def down(self) -> Linear: ...

    @property
    def v(self) -> Linear | None: ...

    @property
    def q_norm(self) -> torch.Tensor | None:
        """[head_dim] per-head norm of q before rotary (with k_norm), or None."""

    @property
    def k_norm(self) -> torch.Tensor | None: ...

    @property
    def attn_out_norm(self) -> torch.Tensor | None:
        """[hidden] norm of the attention output before it joins the residual stream, or None."""

    @property
    def mlp_out_norm(self) -> torch.Tensor | None: ...

    @property
    def window(self) -> int:
        """Sliding window in positions, 0: none."""
