"""GGUF quantized blocks read as our kernels' codes: the same values, bit for bit, as the gguf package's
own dequantization, for every block type we read in place; types without a kernel say so (None)."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize, quantize

from engine.kernels import Linear
from engine.model.gguf_codes import codes_from_blocks

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0"]


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
    assert lin.weight is None and lin.grid is not None  # no float copy kept
    exact = Linear(torch.from_numpy(want), grid_codes=False)(x)
    if activations == "float32":
        assert torch.equal(lin(x), Linear(torch.from_numpy(want))(x))  # the float path's grid kernel, bit for bit
        torch.testing.assert_close(lin(x), exact, rtol=1e-5, atol=1e-5)
    else:  # each input rounded to int16 per block of 32: off by at most half a step of its block's scale
        step = x.view(5, -1, 32).abs().amax(-1) / 32767  # [T, blocks]
        w_abs = torch.from_numpy(want).abs().view(70, -1, 32).sum(-1)  # [N, blocks]
        bound = (step / 2) @ w_abs.T  # [T, N]
        assert ((lin(x) - exact).abs() <= bound * 1.01 + 1e-5).all()


def test_types_without_a_kernel_are_left_to_the_loader():
    raw, _ = _quantized("Q5_1")
    assert codes_from_blocks("Q5_1", raw) is None
    assert codes_from_blocks("Q6_K", np.zeros((1, 210), dtype=np.uint8)) is None
