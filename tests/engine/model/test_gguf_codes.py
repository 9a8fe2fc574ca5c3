"""GGUF quantized blocks read as our kernels' codes: the same values, bit for bit, as the gguf package's
own dequantization, for every block type we read in place; types without a kernel say so (None). The
K-quants' matmul (engine/kernels/csrc/linear_kquant.c) computes its definition whatever the batch."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize, quantize

from engine.kernels import Linear
from engine.model.gguf_codes import SUPER_BYTES, codes_from_blocks

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def _quantized(kind: str, rows: int = 48, cols: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw blocks [rows, bytes], the gguf package's dequantization [rows, cols] float32)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))).astype(np.float32)
    w[3, :32] = 0.0  # an all-zero block (d = 0)
    qtype = GGMLQuantizationType[kind]
    raw = quantize(w, qtype)
    return raw, dequantize(raw, qtype).reshape(rows, cols)


@pytest.mark.parametrize("kind", TYPES)
def test_codes_stand_for_exactly_the_files_values(kind):
    raw, want = _quantized(kind)
    codes = codes_from_blocks(kind, raw)
    assert codes.shape == want.shape
    assert torch.equal(codes.dequantize(), torch.from_numpy(want))


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_a_matmul_on_the_codes_equals_one_on_the_dequantized_weights(kind, activations):
    raw, want = _quantized(kind, rows=70, cols=128, seed=1)
    x = torch.randn(5, 128)
    lin = Linear.from_codes(codes_from_blocks(kind, raw), activations=activations)
    exact = Linear(torch.from_numpy(want), grid_codes=False)(x)
    if kind == "Q5_1" and activations == "float32":  # no float32-activation kernel reads 5-bit codes
        assert lin.storage[0] == "float32" and torch.equal(lin(x), exact)
        return
    assert lin.weight is None and lin.grid is not None  # no float copy kept
    if activations == "int16":  # the 5-bit types are read as 5-bit codes, not 8
        assert lin.storage[0] == {"Q4_0": "q4_1", "Q5_0": "q5_1"}.get(kind, kind.lower()) + "+int16"
    if activations == "float32":
        assert torch.equal(lin(x), Linear(torch.from_numpy(want))(x))  # the float path's grid kernel, bit for bit
        torch.testing.assert_close(lin(x), exact, rtol=1e-5, atol=1e-5)
    else:  # each input rounded to int16 per block of 32: off by at most half a step of its block's scale
        step = x.view(5, -1, 32).abs().amax(-1) / 32767  # [T, blocks]
        w_abs = torch.from_numpy(want).abs().view(70, -1, 32).sum(-1)  # [N, blocks]
        bound = (step / 2) @ w_abs.T  # [T, N]
        assert ((lin(x) - exact).abs() <= bound * 1.01 + 1e-5).all()


def test_types_without_a_kernel_are_left_to_the_loader():
    assert codes_from_blocks("Q3_K", np.zeros((1, 110), dtype=np.uint8)) is None


K_TYPES = list(SUPER_BYTES)


def _k_blocks(kind: str, rows: int, supers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw super-blocks [rows, bytes]: random bits with sane float16 scales, the gguf package's
    dequantization [rows, supers * 256]). (gguf cannot quantize to K-quants; any bits are a valid block.)"""
    rng = np.random.default_rng(seed)
    size = SUPER_BYTES[kind]
    raw = rng.integers(0, 256, (rows, supers * size), dtype=np.uint8)
    blocks = raw.reshape(rows, supers, size)
    for at in ([208] if kind == "Q6_K" else [0, 2]):  # d (and dmin): 1e-3 .. 5e-2, as in real files
        blocks[..., at:at + 2] = rng.uniform(1e-3, 5e-2, (rows, supers, 1)).astype(np.float16).view(np.uint8)
    blocks[2, 0, :] = 0  # an all-zero super-block
    return raw, dequantize(raw, GGMLQuantizationType[kind]).reshape(rows, -1)


@pytest.mark.parametrize("kind", K_TYPES)
def test_k_quant_codes_stand_for_exactly_the_files_values(kind):
    raw, want = _k_blocks(kind, rows=20, supers=3)
    codes = codes_from_blocks(kind, raw)
    assert torch.equal(codes.dequantize(), torch.from_numpy(want))
    ids = torch.tensor([5, 0, 5, 19])  # an embedding's lookup dequantizes only its rows, to the same values
    assert torch.equal(codes.rows(ids).dequantize(), torch.from_numpy(want)[ids])


def _block_constant(kind: str, codes) -> torch.Tensor | None:
    """float64 [N, K / 32]: the term of each block's weights that the int16 kernels multiply by the exact
    sum of the block's inputs (W = codes part + constant), or None."""
    if codes.format in ("q4_k", "q5_k"):
        return -(codes.m.double().repeat_interleave(8, 1) * codes.mn.double())  # -(dmin mn)
    if kind == "Q5_0":
        return -16 * codes.d.double()  # read as 5-bit codes q + 16 with m = -16 d
    return codes.m.double() if codes.m is not None and codes.format in ("q4_1", "q5_1") else None


def _int16_definition(x: torch.Tensor, kind: str, codes) -> torch.Tensor:
    """The int16 kernels' definition (linear_i16.c, linear_kquant.c) in float64: per row and block of 32
    inputs, x rounded to s * round(x / s) with s = amax / 32767 (float32, ties to even); y = x_rounded @ W.T,
    except that the blocks' constant term multiplies the block's exact sum of x."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.full_like(amax, 32767) / amax, 0.0)
    xq = (b * inv).round().double() * (amax / 32767).double()
    y = xq.reshape(x.shape) @ codes.dequantize().double().T
    constant = _block_constant(kind, codes)
    if constant is not None:
        y += (b.double().sum(-1) - xq.sum(-1)) @ constant.T
    return y


@pytest.mark.parametrize("kind", K_TYPES + TYPES)
def test_an_int16_matmul_computes_its_definition_whatever_the_batch(kind):
    torch.manual_seed(3)
    for rows, supers in [(70, 2), (16, 1), (7, 3), (33, 4)]:
        raw, want = (_k_blocks(kind, rows, supers, seed=rows) if kind in K_TYPES
                     else _quantized(kind, rows, supers * 256, seed=rows))
        codes = codes_from_blocks(kind, raw)
        lin = Linear.from_codes(codes, activations="int16")
        assert lin.weight is None and lin.grid is not None  # no float copy kept
        if kind == "Q4_K":  # the file's 4.5 bits a weight, plus 1/8 bit of regrouped scales
            assert lin.storage[1] <= raw.nbytes * 1.03 * -(-rows // 16) * 16 / rows
        x = torch.randn(40, supers * 256) * 2
        x[3, :32] = 0  # an all-zero block
        x[4] *= 1e-30  # tiny values
        y = lin(x)
        w = torch.from_numpy(want)
        ref = _int16_definition(x, kind, codes)
        bound = 2e-6 * (x.abs() @ w.abs().T).double() + 1e-30  # float32 rounding of the block terms
        assert ((y.double() - ref).abs() <= bound).all(), (kind, rows, supers)
        for n in (1, 2, 3, 4, 5, 8, 9, 17):  # each row as in the batch of 40
            assert torch.equal(lin(x[:n]), y[:n]), (kind, rows, n)
        assert torch.equal(lin(x[20:23]), y[20:23])


@pytest.mark.parametrize("kind", K_TYPES)
def test_exact_mode_reads_k_quants_as_their_dequantized_values(kind):
    raw, want = _k_blocks(kind, rows=24, supers=2)
    x = torch.randn(3, 512)
    lin = Linear.from_codes(codes_from_blocks(kind, raw), activations="float32")
    assert lin.storage[0] == "float32"  # no float32-activation kernel reads K-quant codes
    assert torch.equal(lin(x), Linear(torch.from_numpy(want), grid_codes=False)(x))


@pytest.mark.parametrize("kind", TYPES + K_TYPES)
@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_a_matrix_packed_in_pieces_is_the_whole_packed(kind, activations, monkeypatch):
    from engine.kernels import grid

    raw, _ = _k_blocks(kind, rows=200, supers=1) if kind in K_TYPES else _quantized(kind, rows=200, cols=256)
    codes = codes_from_blocks(kind, raw)
    if activations not in codes.activations:
        return
    whole = codes.pack(activations)
    monkeypatch.setattr(grid, "PACK_ROWS", 64)  # 4 pieces, the last one partial
    pieces = codes.pack(activations)
    assert pieces.format == whole.format and torch.equal(pieces.packed, whole.packed)
