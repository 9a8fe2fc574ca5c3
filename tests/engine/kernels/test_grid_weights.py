"""Weights on a GGUF grid (engine/kernels/grid.py, engine/kernels/csrc/linear_grid.c): found exactly, refused
otherwise, and read from their codes with results bit-identical to the float32 kernel's; or, with int16
activations (engine/kernels/csrc/linear_i16.c), equal to their definition and batch-invariant."""

import copy
import os
from pathlib import Path

import pytest
import torch

from engine.kernels.grid import find_grid
from engine.kernels.linear import Linear, amx_tiles
from engine.model.runner import ForwardItem, ModelRunner


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


def on_the_grid(model):
    """A copy of the model with every decoder matrix snapped to Q4_1, the tied embedding / LM head to Q8_0."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(q8_0(p) if "embed" in name else q4_1(p))
    return model


def test_a_model_on_the_grid_gives_the_same_logits_and_caches_as_float32(tiny_model):
    """The default model's case in small: every decoder matrix Q4_1, the tied embedding / LM head Q8_0."""
    model = on_the_grid(tiny_model.model)
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


def int16_reference(x: torch.Tensor, w: torch.Tensor, fmt: str) -> torch.Tensor:
    """linear_i16.c's definition in float64: per row and block of 32 inputs, s = amax / 32767 and
    v = round(x * (32767 / amax)) (float32 arithmetic, ties to even); y = (s v) @ W.T, except that Q4_1's
    block minimum m multiplies the block's exact sum of x (W = q d + m, so y = s v @ (q d).T + m sum(x))."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.full_like(amax, 32767) / amax, 0.0)  # (32767 / t is 32767 * (1 / t))
    xq = (b * inv).round().double() * (amax / 32767).double()
    y = xq.reshape(x.shape) @ w.double().T
    if fmt == "q4_1":
        m = w.reshape(w.shape[0], -1, 32).amin(-1).double()  # [N, blocks]
        y += (b.double().sum(-1) - xq.sum(-1)) @ m.T
    return y


@pytest.mark.parametrize("snap,fmt", [(q4_1, "q4_1"), (q8_0, "q8_0")])
def test_int16_activations_compute_their_definition_whatever_the_batch(snap, fmt):
    torch.manual_seed(2)
    for out_features, in_features in [(100, 64), (960, 576), (64, 1536), (7, 32), (300, 96)]:
        w = snap(torch.randn(out_features, in_features) * 0.05)
        lin = Linear(w, activations="int16")
        assert lin.grid is not None and lin.grid.activations == "int16" and lin.storage[0] == fmt + "+int16"
        if out_features % 16 == 0:
            assert lin.grid.nbytes == w.numel() * (20 if fmt == "q4_1" else 34) // 32  # same bytes as the panels
        x = torch.randn(300, in_features) * 2
        x[7, :32] = 0  # an all-zero block
        x[8] *= 1e-30  # tiny values (their scale is a normal float32)
        y = lin(x)
        ref = int16_reference(x, w, fmt)
        bound = 2e-6 * (x.abs() @ w.abs().T).double() + 1e-30  # float32 rounding of ~K / 32 block terms
        assert ((y.double() - ref).abs() <= bound).all(), (out_features, in_features)
        half_step = (x.reshape(300, -1, 32).abs().amax(-1, keepdim=True) / 65534).expand(-1, -1, 32).reshape(x.shape)
        blocks = w.reshape(out_features, -1, 32)
        qd = (blocks - blocks.amin(-1, keepdim=True)).reshape(w.shape) if fmt == "q4_1" else w  # what x meets
        exact = x.double() @ w.double().T  # and each input is off by at most half a step of its block
        assert ((y.double() - exact).abs() <= (half_step @ qd.abs().T).double() + bound).all()
        for rows in (1, 2, 3, 4, 5, 8, 9, 16, 63, 64, 65, 200):  # every row as in the batch of 300
            assert same_bits(lin(x[:rows]), y[:rows]), (out_features, in_features, rows)
        assert same_bits(lin(x[150:153]), y[150:153])


def amx_machine() -> bool:
    """A CPU with AMX-BF16, and the kernels at its native width (tests/engine/test_kernel_widths.py also
    runs them at 4 and 8 lanes, where linear_amx.c is left out)."""
    flags = Path("/proc/cpuinfo").read_text().split()
    native = os.environ.get("CHATSERVER_KERNEL_LANES") in (None, "16")
    return native and "amx_bf16" in flags and "amx_tile" in flags and "avx512bw" in flags


def test_amx_tiles_are_used_where_the_cpu_has_them_and_give_the_vector_paths_bits():
    assert amx_tiles() == amx_machine()  # the default where the CPU has them; never claimed elsewhere
    if not amx_machine():
        return  # (the rest compares the two paths: only where there are two)
    torch.manual_seed(4)
    try:
        for out_features, in_features in [(960, 576), (576, 1536), (100, 64), (7, 32), (300, 96)]:
            w = q4_1(torch.randn(out_features, in_features) * 0.05)
            w[:5] = torch.tensor([1.0] * 31 + [0.0]).repeat(in_features // 32)  # 31 codes of 15 per block
            lin = Linear(w, activations="int16")
            x = torch.randn(300, in_features) * 3
            x[:3] = torch.tensor([1.0, -1.0, 0.5])[:, None]  # every v = +-32767: the largest dot products
            x[40, :32], x[41], x[42, 7] = 0, x[41] * 1e-30, float("nan")
            tiled = lin(x)
            assert amx_tiles(False) is False
            vector = lin(x)
            assert amx_tiles(True) is True
            assert same_bits(tiled, vector), (out_features, in_features)
            assert tiled[42].isnan().all() and not tiled[43].isnan().any()
    finally:
        amx_tiles(True)


def test_int16_activations_keep_nan_and_infinity_to_their_row():
    torch.manual_seed(3)
    lin = Linear(q4_1(torch.randn(64, 64) * 0.05), activations="int16")
    x = torch.randn(4, 64)
    x[1, 40], x[2, 3] = float("nan"), float("inf")
    y = lin(x)
    assert y[1].isnan().all() and y[2].isnan().all()  # (a float32 matmul gives NaN or an infinity there)
    assert same_bits(y[[0, 3]], lin(x[[0, 3]]))  # the other rows do not notice
    with pytest.raises(ValueError, match="activations must be one of"):
        Linear(q4_1(torch.randn(64, 64)), activations="int8")


def test_a_model_with_int16_activations_is_batch_invariant_and_close_to_float32(tiny_model):
    model = on_the_grid(tiny_model.model)
    i16 = ModelRunner(model, kv_dtype=torch.float16, activations="int16")
    exact = ModelRunner(model, kv_dtype=torch.float16)
    layers = len(i16._layers) * 4
    assert i16.weights_summary()["formats"] == {"q4_1+int16": layers, "q8_0+int16": 1}
    assert i16._fused is not None
    prompts = [list(range(3, 3 + n)) for n in (5, 70, 200)]
    logits = {}
    for r in (i16, exact):
        kvs = [r.new_kv() for _ in prompts]
        r.forward([ForwardItem(kv, p, False) for kv, p in zip(kvs, prompts)])  # 70, 200: the per-op loop
        logits[r] = r.forward([ForwardItem(kv, [7], True) for kv in kvs])  # all three: the one-call path
        alone = []
        for p in prompts:  # each sequence alone, prefilled and decoded by itself: the same bits
            kv = r.new_kv()
            r.forward([ForwardItem(kv, p, False)])
            alone.append(r.forward([ForwardItem(kv, [7], True)]))
        assert same_bits(torch.cat(alone), logits[r])
    diff = (logits[i16] - logits[exact]).abs().max()
    assert 0 < diff < 1e-3 * logits[exact].abs().max()  # not the float32 result, but within its rounding
