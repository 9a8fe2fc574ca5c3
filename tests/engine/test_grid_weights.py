"""Weights on a GGUF grid (engine/grid_weights.py, engine/csrc/linear_grid.c): found exactly, refused
otherwise, and read from their codes with results bit-identical to the float32 kernel's."""

import copy

import pytest
import torch

from engine.grid_weights import find_grid
from engine.linear import Linear
from engine.runner import ForwardItem, ModelRunner


def q4_1(w: torch.Tensor) -> torch.Tensor:
    """w snapped to Q4_1 as llama.cpp quantizes and GGUF dequantizes it: per 32 inputs, m = min,
    d = (max - min) / 15 (both float16), w' = q * d + m in float32."""
    b = w.reshape(w.shape[0], -1, 32)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d, m = ((hi - lo) / 15).half().float(), lo.half().float()
    q = ((b - lo) / torch.where(d == 0, 1.0, d)).round().clamp(0, 15)
    return (q * d + m).reshape(w.shape)


def q8_0(w: torch.Tensor) -> torch.Tensor:
    b = w.reshape(w.shape[0], -1, 32)
    d = (b.abs().amax(-1, keepdim=True) / 127).half().float()
    return ((b / torch.where(d == 0, 1.0, d)).round().clamp(-127, 127) * d).reshape(w.shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("snap,fmt", [(q4_1, "q4_1"), (q8_0, "q8_0")])
def test_a_matrix_on_a_grid_is_found_and_read_bit_identically(snap, fmt):
    torch.manual_seed(0)
    for out_features, in_features in [(100, 64), (576, 576), (960, 576), (64, 1536), (7, 32)]:
        w = snap(torch.randn(out_features, in_features) * 0.05)
        grid = find_grid(w)
        assert grid is not None and grid.format == fmt
        if out_features % 64 == 0:  # no panel padding
            assert grid.nbytes == w.numel() * (20 if fmt == "q4_1" else 34) // 32  # 5 or 8.5 bits a weight
        coded, plain = Linear(w), Linear(w, grid_codes=False)
        assert coded.grid is not None and coded.packed is None and plain.grid is None
        for rows in (1, 2, 3, 4, 5, 6, 7, 16, 64, 300):
            x = torch.randn(rows, in_features)
            assert same_bits(coded(x), plain(x)), (out_features, in_features, rows)


def test_a_matrix_off_the_grid_keeps_the_float32_path():
    torch.manual_seed(1)
    w = q4_1(torch.randn(128, 64))
    assert find_grid(w) is not None
    nudged = w.clone()
    nudged[5, 17] = torch.nextafter(nudged[5, 17], torch.tensor(1.0))  # one weight one ulp off
    assert find_grid(nudged) is None
    assert find_grid(torch.randn(64, 64)) is None  # plain float32 weights
    for bad in (float("nan"), float("inf")):
        broken = w.clone()
        broken[3, 40] = bad
        assert find_grid(broken) is None
    assert find_grid(q4_1(torch.randn(64, 64))[:, :48].contiguous()) is None  # inputs not a multiple of 32
    lin = Linear(nudged)
    assert lin.grid is None and lin.packed is not None


def test_a_model_on_the_grid_gives_the_same_logits_and_caches_as_float32(tiny_model):
    """The default model's case in small: every decoder matrix Q4_1, the tied embedding / LM head Q8_0."""
    model = copy.deepcopy(tiny_model.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(q8_0(p) if "embed" in name else q4_1(p))
    coded, plain = ModelRunner(model, kv_dtype=torch.float16), ModelRunner(model, kv_dtype=torch.float16,
                                                                            grid_codes=False)
    assert all(lin.grid is not None for w in coded._layers for lin in (w.qkv, w.o, w.gate_up, w.down))
    assert coded._lm_head.grid is not None and coded._lm_head.grid.format == "q8_0"
    assert coded._fused is not None
    layers = len(coded._layers) * 4
    assert coded.weights_summary()["formats"] == {"q4_1": layers, "q8_0": 1}
    assert plain.weights_summary()["formats"] == {"float32": layers + 1}
    assert coded.weights_summary()["bytes"] * 3 < plain.weights_summary()["bytes"]
    kvs = {r: [r.new_kv() for _ in range(3)] for r in (coded, plain)}
    prompts = [list(range(3, 3 + n)) for n in (5, 70, 200)]  # 70, 200: long chunks through SDPA
    for r in (coded, plain):
        r.forward([ForwardItem(kv, p, False) for kv, p in zip(kvs[r], prompts)])
    for step in range(4):  # decode batches of 1..3 sequences (one-call path)
        out = {r: r.forward([ForwardItem(kv, [7 + step], True) for kv in kvs[r][:step + 1]]) for r in (coded, plain)}
        assert same_bits(out[coded], out[plain])
    for a, b in zip(kvs[coded], kvs[plain]):
        assert torch.equal(a.data[:, :, :, :a.length], b.data[:, :, :, :b.length])
