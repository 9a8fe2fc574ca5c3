"""Float32 weights that are exactly GGUF-dequantized blocks, kept as their codes (engine/kernels/csrc/linear_grid.c).

The default model ships as a Q4_1 GGUF file: every decoder weight is, per block of 32 consecutive
inputs of one output, q * d + m with a 4-bit q and float16 d, m, and the tied embedding / LM head is
Q8_0 (q * d, 8-bit q). The float32 model transformers builds from it holds exactly those values. Found
again here from the float32 matrix alone and checked element by element, they let a step read 6.4x
(Q4_1: 5 bits a weight) or 3.8x (Q8_0: 8.5 bits) fewer bytes, with results bit-identical to the float32
kernel's. A matrix that is not exactly on a grid (any other checkpoint) gets None and keeps float32.

Two packed layouts, one per kernel (blocks of 32 inputs):
  for float32 activations (linear_grid.c, bit-identical to the float32 kernel), panels of 64 outputs:
    Q4_1: [panels, blocks, 1280] uint8 = d[64] f16 | m[64] f16 | 32 x 32 bytes (q[c] | q[c + 32] << 4)
    Q8_0: [panels, blocks, 2176] uint8 = d[64] f16 | 32 x 64 int8
  for int16 activations (linear_i16.c), groups of 16 outputs, rows of 32 bytes with byte i for output i // 2:
    Q4_1: [groups, blocks, 320] uint8 = d[16] f16 | m[16] f16 | 8 x 32 bytes (k quads j:
          q[c][4j + i % 2] | q[c][4j + 2 + i % 2] << 4)
    Q8_0: [groups, blocks, 544] uint8 = d[16] f16 | 16 x 32 int8 (k pairs j: q[c][2j + i % 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kernels import kquant
from engine.kernels.bindings import constant

# engine/kernels/csrc/common.h's layout constants
BLOCK = constant("BLOCK")  # inputs per quantization block (GGUF Q4_1 / Q8_0)
PANEL = constant("PANEL")  # outputs per packed panel (float32 activations; also linear.py's float32 panels)
GROUP = constant("GROUP")  # outputs per packed group (int16 activations)
FORMATS = {"q4_1": constant("GRID_Q4_1"), "q8_0": constant("GRID_Q8_0"), "q4_k": constant("GRID_Q4_K"),
           "q5_k": constant("GRID_Q5_K"), "q6_k": constant("GRID_Q6_K"),
           "q5_1": constant("GRID_Q5_1")}  # the grid kernels' format argument
INT16_ONLY = ("q5_1", *kquant.K_FORMATS)  # formats only linear_i16.c reads
PACK_ROWS = 8192  # outputs packed at a time (GridCodes.pack)
INT16_FORMAT_OFFSET = constant("GRID_INT16")  # added to a format in layers.c's struct matrix: int16 activations
ACTIVATIONS = ("float32", "int16")  # what the grid kernel rounds each matmul's input to


@dataclass(frozen=True)
class GridWeights:
    format: str  # a key of FORMATS
    packed: torch.Tensor  # uint8, layout above (K-quants: engine/kernels/kquant.py)
    activations: str = "float32"  # "float32": panels for linear_grid.c; "int16": groups for linear_i16.c

    @property
    def nbytes(self) -> int:
        return self.packed.numel()


@dataclass(frozen=True)
class GridCodes:
    """A matrix W [N, K] as the codes of blocks of 32 inputs: W[n, 32 b + i] = q[n, 32 b + i] * d[n, b]
    (+ m[n, b] for q4_1, rounded once, as an fma); or of GGUF's K-quant super-blocks (q4_k, q5_k, q6_k:
    the fields as engine/kernels/kquant.py says). Where the kernels' packed layouts come from."""

    format: str  # a key of FORMATS
    q: torch.Tensor  # [N, K]: uint8 0..15 (q4_1), 0..31 (q5_1) or int8 -127..127 (q8_0)
    d: torch.Tensor  # float16 [N, K / 32]
    m: torch.Tensor | None = None  # float16 [N, K / 32] (q4_1, q5_1)
    sc: torch.Tensor | None = None  # K-quants: their sub-blocks' integer scales
    mn: torch.Tensor | None = None  # q4_k, q5_k: their sub-blocks' integer minimums

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def activations(self) -> tuple[str, ...]:
        """The activations a kernel reads these codes with (ACTIVATIONS; the K-quants: int16 only)."""
        return ("int16",) if self.format in INT16_ONLY else ACTIVATIONS

    def rows(self, ids: torch.Tensor) -> GridCodes:
        """The codes of rows ids (long [T]) alone: [T, K]."""
        pick = [None if t is None else t[ids] for t in (self.m, self.sc, self.mn)]
        return GridCodes(self.format, self.q[ids], self.d[ids], *pick)

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]: the values the codes stand for (what the kernels compute with, exactly)."""
        if self.format in kquant.K_FORMATS:
            return kquant.dequantize(self.format, self.q, self.d, self.m, self.sc, self.mn)
        n, k = self.q.shape
        w = self.q.float().view(n, k // BLOCK, BLOCK) * self.d.float()[..., None]
        if self.m is not None:
            w = w + self.m.float()[..., None]
        return w.view(n, k)

    def pack(self, activations: str = "float32") -> GridWeights:
        """Packed for the kernel of `activations` (the layouts above), PACK_ROWS outputs at a time (a
        multiple of PANEL and GROUP: the pieces concatenate to the whole's layout), so that packing a large
        matrix (a 150k-token LM head) holds a piece's temporaries, not the whole's."""
        if activations not in self.activations:
            raise ValueError(f"{self.format} codes are read with {self.activations} activations, not {activations!r}")
        if activations == "int16" and self.format == "q8_0" and self.q.min() >= -16 and self.q.max() <= 15:
            return GridCodes("q5_1", (self.q + 16).to(torch.uint8), self.d, self._minus_16d()).pack(activations)
        pieces = [self._rows_between(i, i + PACK_ROWS)._pack_whole(activations)
                  for i in range(0, self.q.shape[0], PACK_ROWS)]
        return GridWeights(self.format, torch.cat(pieces) if len(pieces) > 1 else pieces[0], activations)

    def _rows_between(self, start: int, end: int) -> GridCodes:
        pick = [None if t is None else t[start:end] for t in (self.m, self.sc, self.mn)]
        return GridCodes(self.format, self.q[start:end], self.d[start:end], *pick)

    def _pack_whole(self, activations: str) -> torch.Tensor:
        groups = activations == "int16"
        if self.format in kquant.K_FORMATS:
            return kquant.pack(self.format, self.q, self.d, self.m, self.sc, self.mn, _group_scales, _group_codes)
        if self.format == "q5_1":
            return _group_q5_1(self.q, self.d, self.m)
        if self.format == "q4_1":
            return (_group_q4_1 if groups else _pack_q4_1)(self.q, self.d, self.m)
        return (_group_q8_0 if groups else _pack_q8_0)(self.q, self.d)

    def _minus_16d(self) -> torch.Tensor:
        """-16 d in float16 (exact: a power of two), so that q d = (q + 16) d + (-16 d)."""
        m = (-16 * self.d.float()).half()
        assert torch.equal(m.float(), -16 * self.d.float()), "a scale whose -16 d does not fit float16"
        return m

    @staticmethod
    def cat(parts: list[GridCodes]) -> GridCodes | None:
        """The matrices stacked along their outputs (a fused projection), or None if their formats differ."""
        if len({p.format for p in parts}) != 1:
            return None
        if len(parts) == 1:
            return parts[0]
        fields = [[getattr(p, name) for p in parts] for name in ("q", "d", "m", "sc", "mn")]
        return GridCodes(parts[0].format, *(None if f[0] is None else torch.cat(f) for f in fields))


def find_grid(w: torch.Tensor, activations: str = "float32") -> GridWeights | None:
    """w: float32 [N, K] -> its exact Q4_1 or Q8_0 codes, packed for the kernel of `activations`; None if w
    is on neither grid."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
    codes = find_codes(w)
    return codes.pack(activations) if codes is not None else None


def find_codes(w: torch.Tensor) -> GridCodes | None:
    """w: float32 [N, K] -> its exact Q4_1 or Q8_0 codes, or None if w is on neither grid."""
    if w.dtype != torch.float32 or w.dim() != 2 or w.shape[1] % BLOCK:
        return None  # (NaN or infinity fail the element-wise check below)
    codes = _q4_1_codes(w)
    if codes is not None:
        return GridCodes("q4_1", *codes)
    codes = _q8_0_codes(w)
    return GridCodes("q8_0", *codes) if codes is not None else None


def _blocks(w: torch.Tensor) -> torch.Tensor:
    n, k = w.shape
    return w.reshape(n, k // BLOCK, BLOCK)


def _q4_1_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(q uint8 [N, K], d f16 [N, K/32], m f16 [N, K/32]) with w == fma(q, d, m) everywhere, or None.

    GGUF's quantizer sets m to the block's minimum (q = 0) and its maximum gets q = 15, so both are
    recovered from the block's extremes; the check rejects anything else."""
    b = _blocks(w)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d, m = ((hi - lo) / 15).half(), lo.half()
    df, mf = d.float(), m.float()
    if not torch.equal(mf, lo):
        return None
    q = ((b - mf) / torch.where(df == 0, 1.0, df)).round().clamp(0, 15)
    if not torch.equal(q * df + mf, b):  # q * d is exact (<= 15 significant bits): one rounding, as fma
        return None
    return q.to(torch.uint8).reshape(w.shape), d[..., 0], m[..., 0]


def _q8_0_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(q int8 [N, K], d f16 [N, K/32]) with w == q * d everywhere, or None."""
    b = _blocks(w)
    d = (b.abs().amax(-1, keepdim=True) / 127).half()
    df = d.float()
    q = (b / torch.where(df == 0, 1.0, df)).round().clamp(-127, 127)
    if not torch.equal(q * df, b):  # exact products (<= 19 significant bits)
        return None
    return q.to(torch.int8).reshape(w.shape), d[..., 0]


def _panels(t: torch.Tensor, size: int = PANEL) -> torch.Tensor:
    """[N, ...] -> [ceil(N / size) * size, ...], zero padded (padded outputs have d = m = q = 0: weight 0)."""
    n = t.shape[0]
    padded = torch.zeros((-(-n // size) * size, *t.shape[1:]), dtype=t.dtype)
    padded[:n] = t
    return padded


def _scales(s: torch.Tensor) -> torch.Tensor:
    """f16 [N, B] -> uint8 [panels, B, 128]: the 64 outputs' values of each block, output order."""
    s = _panels(s)
    return s.view(-1, PANEL, s.shape[1]).permute(0, 2, 1).contiguous().view(torch.uint8)


def _code_rows(q: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [panels, blocks, 32 (k), 64 (outputs)]"""
    q = _panels(q)
    return q.view(-1, PANEL, q.shape[1] // BLOCK, BLOCK).permute(0, 2, 3, 1)


def _pack_q4_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    rows = _code_rows(q)
    nibbles = (rows[..., :PANEL // 2] | (rows[..., PANEL // 2:] << 4)).contiguous()  # [P, B, 32, 32]
    p, nb = nibbles.shape[:2]
    return torch.cat([_scales(d), _scales(m), nibbles.view(p, nb, -1)], dim=-1).contiguous()


def _pack_q8_0(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    rows = _code_rows(q).contiguous().view(torch.uint8)
    p, nb = rows.shape[:2]
    return torch.cat([_scales(d), rows.view(p, nb, -1)], dim=-1).contiguous()


def _group_scales(s: torch.Tensor) -> torch.Tensor:
    """[N, B] -> uint8 [groups, B, 16 * bytes of one value]: the 16 outputs' values of each block, output order."""
    s = _panels(s, GROUP)
    return s.view(-1, GROUP, s.shape[1]).permute(0, 2, 1).contiguous().view(torch.uint8)


def _group_codes(q: torch.Tensor, k_run: int) -> torch.Tensor:
    """[N, K] -> [groups, blocks, 32 / k_run, 16 (outputs), k_run]: runs of k_run consecutive k per output"""
    q = _panels(q, GROUP)
    return q.view(-1, GROUP, q.shape[1] // BLOCK, BLOCK // k_run, k_run).permute(0, 2, 3, 1, 4)


def _group_q4_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    quads = _group_codes(q, 4)  # [G, B, 8, 16, 4]
    nibbles = (quads[..., :2] | (quads[..., 2:] << 4)).contiguous()  # [G, B, 8, 16, 2]
    g, nb = nibbles.shape[:2]
    return torch.cat([_group_scales(d), _group_scales(m), nibbles.view(g, nb, -1)], dim=-1).contiguous()


def _group_q5_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Q4_1's groups of the low 4 bits, then per block 2 rows of 32 bytes of fifth bits (linear_i16.c)."""
    quads = _group_codes(q, 4)  # [G, B, 8, 16, 4]
    low = quads & 15
    nibbles = (low[..., :2] | (low[..., 2:] << 4)).contiguous()  # [G, B, 8, 16, 2]
    fifth = (quads >> 4).view(*quads.shape[:2], 2, 4, GROUP, 4)  # [G, B, row, j % 4, 16, 4]
    shift = 2 * torch.arange(4, dtype=torch.uint8).view(4, 1, 1)
    bits = (fifth[..., :2] << shift) | (fifth[..., 2:] << (shift + 1))  # [G, B, 2, 4, 16, 2]
    planes = bits.sum(3, dtype=torch.uint8)  # distinct bits: the sum is their or
    g, nb = nibbles.shape[:2]
    return torch.cat([_group_scales(d), _group_scales(m), nibbles.view(g, nb, -1), planes.view(g, nb, -1)],
                     dim=-1).contiguous()


def _group_q8_0(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    pairs = _group_codes(q, 2).contiguous().view(torch.uint8)  # [G, B, 16, 16, 2]
    g, nb = pairs.shape[:2]
    return torch.cat([_group_scales(d), pairs.view(g, nb, -1)], dim=-1).contiguous()
