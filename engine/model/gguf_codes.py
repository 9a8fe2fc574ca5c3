"""GGUF (GGML) quantized blocks -> the block codes our matmul kernels read (engine/kernels/grid.py), without
a float copy. Exact: the codes stand for the same values, bit for bit, as the file's own dequantization
(`gguf.quants.dequantize`, the reference the tests compare with).

Blocks of 32 inputs of one output row, as GGML stores them (little-endian, d and m float16):
  Q4_0  18 bytes: d | qs[16]           q[j] = qs[j] & 15, q[j + 16] = qs[j] >> 4;  w = d * (q - 8)
  Q4_1  20 bytes: d | m | qs[16]       the same nibbles;                          w = d * q + m
  Q5_0  22 bytes: d | qh[4] | qs[16]   q = the nibble | bit j of qh << 4;          w = d * (q - 16)
  Q8_0  34 bytes: d | qs[32] int8                                                   w = d * q
Q4_0 becomes Q4_1 codes with m = -8 d (exact in float16), Q5_0 becomes Q8_0 codes q - 16. Other types
(the K-quants, Q5_1) have no kernel yet: codes_from_blocks returns None and the loader dequantizes them.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.kernels import GridCodes

BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q8_0": 34}  # per block of 32 inputs


def codes_from_blocks(kind: str, raw: np.ndarray) -> GridCodes | None:
    """raw: uint8 [N, K / 32 * block bytes], one row of blocks per output, as the file holds it -> the
    codes of the same [N, K] matrix, or None for a block type without a kernel."""
    size = BLOCK_BYTES.get(kind)
    if size is None:
        return None
    n = raw.shape[0]
    blocks = np.asarray(raw).reshape(n, -1, size)  # [N, B, size] (a view of the mapped file)
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0])  # [N, B]
    if kind == "Q8_0":
        return GridCodes("q8_0", torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(n, -1)), d)
    if kind == "Q4_1":
        m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0])
        return GridCodes("q4_1", _nibbles(blocks[..., 4:], n), d, m)
    if kind == "Q4_0":
        m = (-8 * d.float()).half()
        assert torch.equal(m.float(), -8 * d.float()), "a Q4_0 scale whose -8 d does not fit float16"
        return GridCodes("q4_1", _nibbles(blocks[..., 2:], n), d, m)
    high = blocks[..., 2:6].copy().view(np.uint32)  # [N, B, 1]: bit j = the high bit of element j
    bits = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # [N, B, 32]
    q = _nibbles(blocks[..., 6:], n).view(n, -1, 32).numpy() | (bits << 4)
    return GridCodes("q8_0", torch.from_numpy((q.astype(np.int16) - 16).astype(np.int8).reshape(n, -1)), d)


def _nibbles(qs: np.ndarray, n: int) -> torch.Tensor:
    """[N, B, 16] packed bytes -> uint8 [N, B * 32] codes: the low nibbles are elements 0..15 of each block,
    the high ones 16..31 (numpy: its byte operations are vectorised, torch's are not, 4x)."""
    return torch.from_numpy(np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, -1))
