"""GGUF's K-quants (Q4_K, Q5_K, Q6_K) as codes: their values and the layout linear_kquant.c reads.

A matrix W [N, K] (K a multiple of 256) in super-blocks of 256 inputs of one output, as GridCodes fields:
  q4_k, q5_k: q uint8 [N, K] (0..15 / 0..31), d, m float16 [N, K / 256] (d, dmin),
              sc, mn uint8 [N, K / 32] (6-bit):   W = (d sc) q - (m mn)       per block of 32
  q6_k:       q int8 [N, K] (-32..31), d float16 [N, K / 256], sc int8 [N, K / 16]:   W = (d sc) q
with d sc and m mn rounded once to float32 (exact), then one float32 multiply and subtract: the values
gguf.quants' dequantization gives, bit for bit. Only the int16-activation kernel reads them; a float32
(exact-mode) matmul gets the dequantized matrix (engine/kernels/linear.py).

Packed for linear_kquant.c, groups of 16 outputs, per group and super-block (common.h's sizes):
  q4_k: d[16] f16 | -m[16] f16 | sc[8][16] | mn[8][16] | 8 blocks of Q4_1's int16-layout codes (256 bytes)
  q5_k: the same head | 8 blocks of Q8_0's int16-layout codes (512 bytes, uint8)
  q6_k: d[16] f16 | sc[16][16] int8 | 8 blocks of: q + 32's low 4 bits as Q4_1's codes (256 bytes), then
        4 rows of 32 bytes of their top 2 bits (2 quads a row; linear_kquant.c)
"""

from __future__ import annotations

import torch

from engine.kernels.bindings import constant

SUPER = constant("SUPER")  # inputs per super-block
K_FORMATS = ("q4_k", "q5_k", "q6_k")
_G, _B = constant("GROUP"), constant("BLOCK")
GROUP_BYTES = {"q4_k": 20 * _G + 8 * _B * _G // 2, "q5_k": 20 * _G + 8 * _B * _G,
               "q6_k": 18 * _G + 8 * _B * _G * 3 // 4}  # per group of 16 outputs and super-block: common.h's Q*K_GROUP_BYTES


def sub_scales(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """float16 d [N, K / 256] times integer scales s [N, K / 256 * n] -> float32 [N, K / 256 * n] (exact)."""
    n = s.shape[1] // d.shape[1]
    return (d.float()[..., None] * s.float().view(d.shape[0], d.shape[1], n)).view(s.shape)


def dequantize(fmt: str, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, sc: torch.Tensor,
               mn: torch.Tensor | None) -> torch.Tensor:
    """float32 [N, K]: the values the codes stand for (the fields above)."""
    n, k = q.shape
    sub = k // sc.shape[1]  # 32, or 16 (q6_k)
    w = q.float().view(n, -1, sub) * sub_scales(d, sc)[..., None]
    if m is not None:
        w = w - sub_scales(m, mn)[..., None]
    return w.view(n, k)


def pack(fmt: str, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, sc: torch.Tensor,
         mn: torch.Tensor | None, group_scales, group_codes) -> torch.Tensor:
    """uint8 [groups, K / 256, GROUP_BYTES[fmt]] (the layout above). group_scales / group_codes: grid.py's
    regrouping of per-output values [N, B] and codes [N, K] into groups of 16 outputs."""
    supers = q.shape[1] // SUPER

    def head(t: torch.Tensor) -> torch.Tensor:  # [N, B] -> [groups, supers, bytes]
        g = group_scales(t)
        return g.reshape(g.shape[0], supers, -1)

    if fmt == "q4_k":
        quads = group_codes(q, 4)  # [G, blocks, 8, 16, 4]
        codes = (quads[..., :2] | (quads[..., 2:] << 4)).contiguous()
    elif fmt == "q6_k":
        quads = group_codes((q.to(torch.int16) + 32).to(torch.uint8), 4)  # [G, blocks, 8, 16, 4], 0..63
        low, top = quads & 15, quads >> 4
        nibbles = (low[..., :2] | (low[..., 2:] << 4)).contiguous()  # [G, blocks, 8, 16, 2]
        top = top.view(*quads.shape[:2], 4, 2, quads.shape[3], 4)  # [G, blocks, row, j % 2, 16, 4]
        shift = 4 * torch.arange(2, dtype=torch.uint8).view(2, 1, 1)
        rows = ((top[..., :2] | (top[..., 2:] << 2)) << shift).sum(3, dtype=torch.uint8)  # distinct bits
        g, nb = nibbles.shape[:2]
        codes = torch.cat([nibbles.view(g, nb, -1), rows.view(g, nb, -1)], dim=-1)
    else:
        codes = group_codes(q, 2).contiguous().view(torch.uint8)  # [G, blocks, 16, 16, 2]
    codes = codes.reshape(codes.shape[0], supers, -1)
    parts = [head(d), head(-m), head(sc), head(mn)] if fmt != "q6_k" else [head(d), head(sc)]
    packed = torch.cat(parts + [codes], dim=-1).contiguous()
    assert packed.shape[-1] == GROUP_BYTES[fmt]
    return packed
