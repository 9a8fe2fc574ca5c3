"""Sliding-window layers (gemma3's local layers, Mistral's window): the ragged kernel, the blocked chunk kernel
and the torch fallback see exactly the keys transformers' sliding-window mask lets a query see."""

import pytest
import torch
from transformers.masking_utils import sliding_window_causal_mask_function

from engine.kernels.attention import (
    RaggedAttention,
    prefill_attention,
    prefix_causal_mask,
)
from engine.kv.session_kv import SessionKV


@pytest.mark.parametrize("start,n,window", [(0, 1, 4), (0, 9, 4), (5, 1, 4), (30, 7, 8), (3, 5, 100), (10, 6, 1)])
def test_a_sliding_window_sees_the_keys_transformers_lets_it_see(start, n, window):
    """prefix_causal_mask with a window is transformers' sliding-window causal mask (the fallback and the
    reference the kernels are tested against): key position > query position - window, and causal."""
    allowed = sliding_window_causal_mask_function(window)
    t = torch.tensor
    want = torch.tensor([[bool(allowed(t(0), t(0), t(start + i), t(j))) for j in range(start + n)] for i in range(n)])
    assert torch.equal(prefix_causal_mask(start, n, window, always=True), want)


@pytest.mark.parametrize("window", [1, 8, 40])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 64, 256])
def test_ragged_attention_with_a_sliding_window_matches_masked_sdpa(head_dim, kv_dtype, window):
    """Decode rows and short chunks of a sliding-window layer see only the last `window` positions, across a
    shared prefix (the window may start inside it, or past it) and vector blocks."""
    torch.manual_seed(head_dim + window)
    layers, hq, hkv = 2, 6, 2
    cases = [(0, 1), (0, 12), (5, 1), (30, 9), (90, 1), (150, 17), (47, 3)]  # (cached positions, new rows)
    kvs, twins, firsts, first = [], [], [], 0
    for cached, rows in cases:
        kv = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        kv.data.normal_()
        kv.token_ids = list(range(cached))
        if cached > 40:
            kv.share(41)
        twin = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        twin.data[:, :, :, :cached] = kv.positions(0, cached)
        twin.token_ids = list(kv.token_ids)
        kvs.append(kv), twins.append(twin), firsts.append(first)
        first += rows
    q, k, v = torch.randn(first, hq, head_dim) * 2, torch.randn(first, hkv, head_dim), torch.randn(first, hkv, head_dim)
    got, want = torch.full((first, hq, head_dim), float("nan")), torch.empty(first, hq, head_dim)
    rows = [n for _, n in cases]
    scale = head_dim ** -0.5
    RaggedAttention(list(zip(kvs, firsts, rows)), hq, scale, use_native=True)(1, q, k, v, got, window=window)
    RaggedAttention(list(zip(twins, firsts, rows)), hq, scale, use_native=False)(1, q, k, v, want, window=window)
    torch.testing.assert_close(got, want, atol=5e-6, rtol=1e-5)  # sums of up to 256 products of scores ~2x
    unwindowed = torch.empty_like(got)
    RaggedAttention(list(zip(twins, firsts, rows)), hq, scale, use_native=False)(1, q, k, v, unwindowed)
    assert not torch.allclose(unwindowed, want)  # the window matters in these cases
    alone = torch.empty(cases[-2][1], hq, head_dim)
    rows_last = slice(firsts[-2], firsts[-2] + cases[-2][1])
    kv_alone = SessionKV(layers, hkv, head_dim, kv_dtype, 167)
    kv_alone.data[:, :, :, :150] = kvs[-2].positions(0, 150)
    kv_alone.token_ids = list(range(150))
    RaggedAttention([(kv_alone, 0, cases[-2][1])], hq, scale, use_native=True)(1, q[rows_last], k[rows_last],
                                                                               v[rows_last], alone, window=window)
    assert torch.equal(alone, got[rows_last]), "a sequence's output must not depend on the rest of the batch"


@pytest.mark.parametrize("window", [1, 10, 50, 64, 100])  # 10: position 200 sees key 191, the last of block 2
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim,hq,hkv", [(64, 9, 3), (256, 4, 1)])
def test_blocked_attention_with_a_sliding_window_matches_masked_sdpa(head_dim, hq, hkv, kv_dtype, window):
    """A long prefill chunk of a sliding-window layer: rows whose window starts past a key block, or
    inside the shared prefix, see exactly the last `window` positions."""
    torch.manual_seed(head_dim + window)
    layers = 2
    for cached, rows, shared in [(0, 65, 0), (0, 300, 0), (37, 130, 0), (200, 97, 120)]:
        kv = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        kv.data.normal_()
        kv.token_ids = list(range(cached))
        if shared:
            kv.share(shared)
        twin = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        twin.data[:, :, :, :cached] = kv.positions(0, cached)
        twin.token_ids = list(kv.token_ids)
        q = torch.randn(rows, hq, head_dim) * 2
        k, v = torch.randn(rows, hkv, head_dim), torch.randn(rows, hkv, head_dim)
        got = prefill_attention(kv, 1, cached, q, k, v, head_dim ** -0.5, use_native=True, window=window)
        want = prefill_attention(twin, 1, cached, q, k, v, head_dim ** -0.5, use_native=False, window=window)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
