"""GGUF (GGML) quantized blocks -> the block codes our matmul kernels read (engine/kernels/grid.py), without
a float copy. Exact: the codes stand for the same values, bit for bit, as the file's own dequantization
(`gguf.quants.dequantize`, the reference the tests compare with).

Blocks of 32 inputs of one output row, as GGML stores them (little-endian, d and m float16):
  Q4_0  18 bytes: d | qs[16]           q[j] = qs[j] & 15, q[j + 16] = qs[j] >> 4;  w = d * (q - 8)
  Q4_1  20 bytes: d | m | qs[16]       the same nibbles;                          w = d * q + m
  Q5_0  22 bytes: d | qh[4] | qs[16]   q = the nibble | bit j of qh << 4;          w = d * (q - 16)
  Q5_1  24 bytes: d | m | qh[4] | qs[16]  the same q;                             w = d * q + m
  Q8_0  34 bytes: d | qs[32] int8                                                   w = d * q
Q4_0 becomes Q4_1 codes with m = -8 d (exact in float16), Q5_0 becomes Q8_0 codes q - 16 (which the
int16 kernel reads as 5-bit codes again: engine/kernels/grid.py).

Super-blocks of 256 inputs (the K-quants; engine/kernels/kquant.py says what the codes stand for):
  Q4_K 144 bytes: d | dmin | scales[12] | qs[128]              8 sub-blocks of 32, 6-bit sc and mn
  Q5_K 176 bytes: d | dmin | scales[12] | qh[32] | qs[128]     the same, a fifth bit from qh
  Q6_K 210 bytes: ql[128] | qh[64] | sc[16] int8 | d           16 sub-blocks of 16, q = 6 bits - 32
scales[12] holds 8 sc and 8 mn of 6 bits: bytes 0-3 the low 6 bits of sc 0-3 (top 2 bits: sc 4-7's high
bits), 4-7 the same for mn, 8-11 the low nibbles of sc 4-7 | mn 4-7's << 4. Other types (Q2_K, Q3_K)
have no kernel: codes_from_blocks returns None and the loader dequantizes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.kernels import GridCodes

BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}  # per block of 32 inputs
SUPER_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}  # per super-block of 256 inputs


def codes_from_blocks(kind: str, raw: np.ndarray) -> GridCodes | None:
    """raw: uint8 [N, K / 32 * block bytes], one row of blocks per output, as the file holds it -> the
    codes of the same [N, K] matrix, or None for a block type without a kernel."""
    if kind in SUPER_BYTES:
        return _k_codes(kind, np.asarray(raw).reshape(raw.shape[0], -1, SUPER_BYTES[kind]))
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
    at = 4 if kind == "Q5_1" else 2  # where qh begins
    high = blocks[..., at:at + 4].copy().view(np.uint32)  # [N, B, 1]: bit j = the high bit of element j
    bits = ((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)  # [N, B, 32]
    q = _nibbles(blocks[..., at + 4:], n).view(n, -1, 32).numpy() | (bits << 4)
    if kind == "Q5_1":
        m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0])
        return GridCodes("q5_1", torch.from_numpy(q.reshape(n, -1)), d, m)
    return GridCodes("q8_0", torch.from_numpy((q.astype(np.int16) - 16).astype(np.int8).reshape(n, -1)), d)


def has_kernel(kind: str) -> bool:
    """Whether matrices of this GGML block type are read as codes (codes_from_blocks does not return None)."""
    return kind in BLOCK_BYTES or kind in SUPER_BYTES


class BlockMatrix:
    """A matrix of GGUF blocks as the file holds them, decoded into codes only when asked: whole when the
    runner packs it (then the decoded codes, a byte a weight, live only until they are packed), or a few
    rows at a time (an embedding lookup)."""

    def __init__(self, kind: str, raw: np.ndarray):
        """raw: uint8 [rows, bytes per row] (often a view of the memory-mapped file)."""
        self.kind, self._raw = kind, raw

    @property
    def raw(self) -> np.ndarray:
        return self._raw

    @property
    def shape(self) -> tuple[int, int]:
        rows, nbytes = self.raw.shape
        per_block, size = (SUPER_BYTES[self.kind], 256) if self.kind in SUPER_BYTES else (BLOCK_BYTES[self.kind], 32)
        return rows, nbytes // per_block * size

    def decode(self) -> GridCodes:
        return codes_from_blocks(self.kind, self.raw)

    def rows(self, ids: torch.Tensor) -> GridCodes:
        """ids: long [T] -> the codes of those rows [T, K]."""
        return codes_from_blocks(self.kind, self.raw[ids.numpy()])


class MappedRows(BlockMatrix):
    """A block matrix left in the GGUF file, memory-mapped on first use: an embedding table looked up this
    way costs the process no memory beyond the pages of the rows it has read (clean file pages, which the
    system can take back)."""

    def __init__(self, path: Path, kind: str, offset: int, shape: tuple[int, int]):
        """shape: [rows, bytes per row] of the tensor's blocks at byte `offset` of the file."""
        super().__init__(kind, None)
        self.path, self.offset, self.raw_shape = path, offset, shape

    @property
    def raw(self) -> np.ndarray:
        if self._raw is None:
            self._raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.raw_shape)
        return self._raw


def _nibbles(qs: np.ndarray, n: int) -> torch.Tensor:
    """[N, B, 16] packed bytes -> uint8 [N, B * 32] codes: the low nibbles are elements 0..15 of each block,
    the high ones 16..31 (numpy: its byte operations are vectorised, torch's are not, 4x)."""
    return torch.from_numpy(np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, -1))


def _k_codes(kind: str, blocks: np.ndarray) -> GridCodes:
    """blocks: uint8 [N, S, bytes] super-blocks -> the codes (engine/kernels/kquant.py's fields)."""
    n, supers = blocks.shape[:2]

    def half(a: int) -> torch.Tensor:  # the float16 at byte a of each super-block -> [N, S]
        return torch.from_numpy(blocks[..., a:a + 2].copy().view(np.float16)[..., 0])

    def split_nibbles(qs: np.ndarray, run: int) -> np.ndarray:  # runs of `run` bytes: low nibbles, then high
        qs = qs.reshape(n, supers, -1, 1, run) >> np.array([0, 4], dtype=np.uint8).reshape(2, 1)
        return (qs & 15).reshape(n, supers, -1, 32)

    if kind == "Q6_K":
        low = split_nibbles(blocks[..., :128], 64)  # [N, S, 8, 32]
        high = blocks[..., 128:192].reshape(n, supers, -1, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)
        q = (low | ((high & 3).reshape(low.shape) << 4)).astype(np.int8) - np.int8(32)
        sc = blocks[..., 192:208].copy().view(np.int8).reshape(n, -1)
        return GridCodes("q6_k", torch.from_numpy(q.reshape(n, -1)), half(208), sc=torch.from_numpy(sc))
    scales = blocks[..., 4:16].reshape(n, supers, 3, 4)
    a, b, c = scales[..., 0, :], scales[..., 1, :], scales[..., 2, :]
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 2) & 48)], axis=-1).reshape(n, -1)  # [N, S * 8]
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 2) & 48)], axis=-1).reshape(n, -1)
    if kind == "Q4_K":
        q = split_nibbles(blocks[..., 16:144], 32)
    else:
        low = split_nibbles(blocks[..., 48:176], 32)
        bits = blocks[..., 16:48].reshape(n, supers, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(8, 1)
        q = low | ((bits & 1) << 4)
    fmt = "q4_k" if kind == "Q4_K" else "q5_k"
    return GridCodes(fmt, torch.from_numpy(np.ascontiguousarray(q).reshape(n, -1)), half(0), half(2),
                     torch.from_numpy(sc), torch.from_numpy(mn))
