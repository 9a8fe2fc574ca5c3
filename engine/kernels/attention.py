"""Attention of one packed step against each sequence's own KV buffer (protocols.SequenceKV's layout).

Two kinds of sequences share a step:
  * decoding ones (one new token each) and short prefill chunks (up to SHORT_CHUNK new tokens, e.g.
    the next message of a conversation): one call per layer for all of them, to the C kernel
    engine/kernels/csrc/attention.c when it could be built (no per-sequence Python, reads each cache in
    place), else a per-sequence SDPA loop;
  * long prefill chunks: one call per sequence and layer to engine/kernels/csrc/chunk_attention.c (blocked,
    online softmax: compute-bound matrix products, 1.5-2x SDPA with a prefix-causal mask on an AVX2
    machine, bench/attention_kernels.py), else SDPA.

A layer may have a sliding window w (window > 0): a query at position p then sees keys p - w + 1 .. p only
(transformers' sliding_window: key position > p - w); window 0 sees every earlier position.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from engine.kernels import bindings
from engine.kernels.protocols import SequenceKV

_P, _I64 = ctypes.c_void_p, ctypes.c_int64  # element types of the per-sequence arrays the kernels take
_KERNEL_DTYPES = {torch.float32, torch.float16}  # KV dtypes engine/kernels/csrc/attention.c reads
SHORT_CHUNK = 64  # new tokens of a sequence up to which its attention goes to the ragged kernel


class RaggedAttention:
    """Attention for sequences with a few new rows each, built once per step, called once per layer.

    seqs: (kv, first row, number of rows) per sequence; its new tokens are at positions kv.length.. and
    rows first.. of the step's packed q [T, Hq, D], k/v [T, Hkv, D] (float32). A call writes those
    rows' keys/values into each cache and their attention output into `out` [T, Hq, D] (contiguous).
    """

    def __init__(self, seqs: list[tuple[SequenceKV, int, int]], num_heads: int, scale: float, use_native: bool):
        self.seqs = seqs
        self.num_heads = num_heads
        self.scale = scale
        self.starts = [kv.length for kv, _, _ in seqs]
        kernel = bindings.function("ragged_attention_window_f32") if use_native else None
        dtypes = {kv.dtype for kv, _, _ in seqs}
        self.kernel = kernel if kernel is not None and len(dtypes) <= 1 and dtypes <= _KERNEL_DTYPES else None
        self._kv_half = int(dtypes == {torch.float16})
        if self.kernel is not None:
            b, kvs = len(seqs), [kv for kv, _, _ in seqs]
            self._bases = (_P * b)(*[kv.data.data_ptr() for kv in kvs])
            self._caps = (_I64 * b)(*[kv.data.shape[3] for kv in kvs])
            self._starts = (_I64 * b)(*[kv.own_length for kv in kvs])  # own index of the first new token
            self._rows = (_I64 * b)(*[n for _, _, n in seqs])
            self._offsets = (_I64 * b)(*[first for _, first, _ in seqs])
            self._pbases = (_P * b)(*[kv.prefix.data.data_ptr() if kv.prefix else 0 for kv in kvs])
            self._pcaps = (_I64 * b)(*[kv.prefix.capacity if kv.prefix else 0 for kv in kvs])
            self._plens = (_I64 * b)(*[kv.prefix_len for kv in kvs])

    def kernel_args(self) -> tuple:
        """(B, kv_half, bases, caps, starts, rows, offsets, pbases, pcaps, plens) as the C kernels take them."""
        return (len(self.seqs), self._kv_half, self._bases, self._caps, self._starts, self._rows, self._offsets,
                self._pbases, self._pcaps, self._plens)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 window: int = 0) -> None:
        """window: the layer's sliding window (0: none)."""
        if not self.seqs:
            return
        if self.kernel is None:
            for (kv, first, n), start in zip(self.seqs, self.starts):
                rows = slice(first, first + n)
                out[rows] = prefill_attention(kv, layer, start, q[rows], k[rows], v[rows], self.scale, use_native=False,
                                              window=window)
            return
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and out.is_contiguous()
        status = self.kernel(len(self.seqs), q.shape[1], k.shape[1], q.shape[2], layer, self.scale, window,
                             q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), *self.kernel_args()[1:])
        if status != 0:
            raise RuntimeError(f"ragged attention kernel failed with status {status}")


def chunk_attention_kernel(kv: SequenceKV, use_native: bool):
    """chunk_attention.c's chunk_attention_window_f32 if it reads this KV's dtype (and could be built), else
    None (SDPA)."""
    return bindings.function("chunk_attention_window_f32") if use_native and kv.dtype in _KERNEL_DTYPES else None


def prefill_attention(kv: SequenceKV, layer: int, start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float, *, use_native: bool, window: int = 0) -> torch.Tensor:
    """q [n, Hq, D], k/v [n, Hkv, D] for positions start..start+n; writes k/v; returns [n, Hq, D].
    use_native: the chunk kernel when it can take this KV and shape, else SDPA (the reference).
    window: the layer's sliding window (0: none)."""
    n = q.shape[0]
    kv.write(layer, start, k.transpose(0, 1), v.transpose(0, 1))
    kernel = chunk_attention_kernel(kv, use_native)
    if kernel is not None and q.dtype == torch.float32 and q.is_contiguous():
        out = torch.empty_like(q)
        prefix = kv.prefix.data if kv.prefix is not None else None
        status = kernel(q.shape[1], k.shape[1], q.shape[2], layer, scale, window, q.data_ptr(), out.data_ptr(), n,
                        start - kv.prefix_len, int(kv.dtype == torch.float16), kv.data.data_ptr(), kv.data.shape[3],
                        prefix.data_ptr() if prefix is not None else 0, kv.prefix.capacity if prefix is not None else 0,
                        kv.prefix_len)
        if status == 0:
            return out
        if status == 2:
            raise MemoryError("chunk attention: out of memory")
        # status 1: a shape the kernel does not take (head_dim not a multiple of its strip): SDPA
    keys, values = kv.view(layer, start + n)  # [Hkv, start+n, D]
    keys, values = keys.to(q.dtype), values.to(q.dtype)  # float16 KV: widened (a copy) for SDPA
    windowed = 0 < window < start + n
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[None], values[None], attn_mask=prefix_causal_mask(start, n, window),
        is_causal=(start == 0 and n > 1 and not windowed), scale=scale, enable_gqa=True,
    )  # [1, Hq, n, D]
    return o[0].transpose(0, 1)


def prefix_causal_mask(start: int, n: int, window: int = 0, always: bool = False) -> torch.Tensor | None:
    """Bool [n, start+n]: query i (at position start+i) sees keys 0..start+i, or with a window w > 0 keys
    start+i-w+1..start+i. None when SDPA needs none (unless always)."""
    windowed = 0 < window < start + n
    if not always and not windowed and (n == 1 or start == 0):
        return None  # a single query sees everything cached; a fresh prefill uses is_causal
    mask = torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
    return mask.triu(diagonal=start - window + 1) if windowed else mask
