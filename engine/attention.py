"""Attention of one packed step against each sequence's own KV buffer (engine/kv_cache.py layout).

Two kinds of sequences share a step:
  * decoding ones (one new token each): one call per layer for all of them, to the C kernel
    engine/csrc/decode_attention.c when it could be built (no per-sequence Python, reads each cache
    once), else a per-sequence SDPA loop;
  * prefilling ones (a chunk of new tokens after a cached prefix): per-sequence SDPA with a
    prefix-causal mask; few per step, each compute-bound, so the Python cost does not matter.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from engine import native
from engine.kv_cache import SessionKV

_P = ctypes.c_void_p


@functools.cache
def native_kernel():
    """The decode_attention_f32 C function, or None (no compiler); built on first use."""
    return native.function("decode_attention_f32", [ctypes.c_int] * 5 + [ctypes.c_float] + [_P] * 10)


class DecodeAttention:
    """Attention for the decoding sequences of one step (each has one new token at position kv.length).

    Built once per step; called once per layer. q [B, Hq, D], k/v [B, Hkv, D] float32; writes the output
    [B, Hq, D] into `out`, and k/v into each sequence's cache at its position.
    """

    def __init__(self, kvs: list[SessionKV], num_heads: int, scale: float, use_native: bool):
        self.kvs = kvs
        self.num_heads = num_heads
        self.scale = scale
        self.starts = [kv.length for kv in kvs]
        kernel = native_kernel() if use_native else None
        self.kernel = kernel if kernel is not None and all(kv.dtype == torch.float32 for kv in kvs) else None
        if self.kernel is not None:
            b = len(kvs)
            self._bases = (_P * b)(*[kv.data.data_ptr() for kv in kvs])
            self._caps = (ctypes.c_int64 * b)(*[kv.data.shape[3] for kv in kvs])
            self._starts = (ctypes.c_int64 * b)(*[kv.own_length for kv in kvs])  # own index of the new token
            self._pbases = (_P * b)(*[kv.prefix.data.data_ptr() if kv.prefix else 0 for kv in kvs])
            self._pcaps = (ctypes.c_int64 * b)(*[kv.prefix.data.shape[3] if kv.prefix else 0 for kv in kvs])
            self._plens = (ctypes.c_int64 * b)(*[kv.prefix_len for kv in kvs])

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
        """Writes the attention output into out [B, Hq, D] (contiguous)."""
        if self.kernel is None:
            out.copy_(self._torch(layer, q, k, v))
            return
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        assert out.is_contiguous()
        b, hq, d = q.shape
        status = self.kernel(b, hq, k.shape[1], d, layer, self.scale, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                             out.data_ptr(), self._bases, self._caps, self._starts, self._pbases, self._pcaps,
                             self._plens)
        if status != 0:
            raise RuntimeError(f"decode_attention kernel failed with status {status}")

    def _torch(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        for i, (kv, s) in enumerate(zip(self.kvs, self.starts)):
            kv.write(layer, s, k[i, :, None], v[i, :, None])
            keys, values = kv.view(layer, s + 1)  # [Hkv, s+1, D]
            o = F.scaled_dot_product_attention(q[i, :, None][None], keys[None], values[None],
                                               scale=self.scale, enable_gqa=True)  # [1, Hq, 1, D]
            out[i] = o[0, :, 0]
        return out


def prefill_attention(kv: SessionKV, layer: int, start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """q [n, Hq, D], k/v [n, Hkv, D] for positions start..start+n; writes k/v; returns [n, Hq, D].
    mask: prefix_causal_mask(start, n), built once per step by the caller."""
    n = q.shape[0]
    kv.write(layer, start, k.transpose(0, 1), v.transpose(0, 1))
    keys, values = kv.view(layer, start + n)  # [Hkv, start+n, D]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], values[None],
        attn_mask=mask, is_causal=(start == 0 and n > 1), scale=scale, enable_gqa=True,
    )  # [1, Hq, n, D]
    return o[0].transpose(0, 1)


def prefix_causal_mask(start: int, n: int) -> torch.Tensor | None:
    """Bool [n, start+n]: query i (at position start+i) sees keys 0..start+i. None when SDPA needs none."""
    if n == 1 or start == 0:
        return None  # a single query sees everything cached; a fresh prefill uses is_causal
    return torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
