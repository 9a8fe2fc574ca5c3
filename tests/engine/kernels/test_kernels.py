"""The C kernels (engine/kernels/csrc/): built on this machine, equal to torch's results, batch-invariant."""

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.kernels.attention import RaggedAttention, chunk_attention_kernel, prefill_attention
from engine.kernels.build import kernels
from engine.kernels.layer_ops import LayerOps
from engine.kernels.linear import Linear
from engine.kv.session_kv import SessionKV
from engine.model.runner import ForwardItem, ModelRunner


def test_the_kernels_build_here():
    # CI machines have gcc: a silent fallback to torch would hide a 2-3x slowdown
    assert kernels() is not None


@pytest.mark.parametrize("march", ["x86-64", "haswell", "skylake-avx512", "sapphirerapids"])
def test_the_kernels_compile_for_every_vector_width(march, tmp_path):
    """Each machine builds the kernels for its own CPU (-march=native), so the code paths of the other
    widths never run here; they must at least build: SSE2 (4 lanes), AVX2 (8), AVX-512 (16), + BF16."""
    import platform
    import shutil
    import subprocess

    from engine.kernels import build as native

    assert platform.machine() == "x86_64" and shutil.which("gcc"), "CI machines are x86-64 with gcc"
    flags = [f for f in native._FLAGS if f != "-march=native"] + [f"-march={march}"]
    sources = sorted(str(p) for p in native._SOURCES.glob("*.c"))
    build = subprocess.run(["gcc", *flags, "-Werror=implicit-function-declaration", "-o", str(tmp_path / "k.so"),
                            *sources, "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]


def test_linear_matches_torch_for_any_batch_and_shape():
    torch.manual_seed(0)
    for out_features, in_features in [(100, 48), (576, 576), (65, 7)]:
        w, b = torch.randn(out_features, in_features), torch.randn(out_features)
        native, plain = Linear(w, b), Linear(w, b, native=False)
        for rows in (1, 2, 3, 4, 5, 17, 64):
            x = torch.randn(rows, in_features)
            torch.testing.assert_close(native(x), plain(x), atol=1e-4, rtol=1e-4)


def _cpu_has(flag: str) -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and flag in line.split() for line in f)


def test_bfloat16_linear_matches_torch_on_the_same_rounded_operands():
    """--dtype bfloat16: weights and activations rounded to bfloat16, products summed in float32 (our
    kernel, on CPUs with AVX-512 BF16; elsewhere torch's bf16 matmul, whose outputs are bf16 too)."""
    from engine.kernels.linear import bf16_matmul_supported

    has_bf16 = _cpu_has("avx512_bf16")
    assert bf16_matmul_supported() == has_bf16, "the kernel builds exactly where the CPU has it"
    torch.manual_seed(1)
    for out_features, in_features in [(100, 48), (576, 576), (65, 7), (1536, 576)]:
        w, b = torch.randn(out_features, in_features).bfloat16(), torch.randn(out_features).bfloat16()
        native = Linear(w, b)
        assert (native.packed is not None) == has_bf16
        for rows in (1, 2, 5, 6, 7, 17):
            x = torch.randn(rows, in_features)
            want = x.bfloat16().float() @ w.float().T + b.float()
            tolerance = dict(atol=1e-3, rtol=1e-4) if has_bf16 else dict(atol=0.1, rtol=1e-2)  # bf16-rounded outputs
            torch.testing.assert_close(native(x), want, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_rows_do_not_depend_on_the_rest_of_the_batch(dtype):
    w = torch.randn(300, 576).to(dtype)
    x = torch.randn(37, 576)
    lin = Linear(w)
    together = lin(x)
    for i in (0, 5, 36):
        assert torch.equal(lin(x[i:i + 1])[0], together[i])


def test_decode_attention_kernel_matches_sdpa_and_writes_the_cache(tiny_model):
    runner = ModelRunner(tiny_model.model)
    kvs = [runner.new_kv() for _ in range(3)]
    for kv, n in zip(kvs, (5, 40, 300)):
        runner.forward([ForwardItem(kv, list(range(3, 3 + n)), False)])
    twins = [runner.new_kv() for _ in kvs]
    for twin, kv in zip(twins, kvs):
        twin.ensure_capacity(kv.length + 1)
        twin.data[:, :, :, :kv.length] = kv.data[:, :, :, :kv.length]
        twin.token_ids = list(kv.token_ids)
        kv.ensure_capacity(kv.length + 1)
    hq, hkv, d = runner.num_heads, runner.num_kv_heads, runner.head_dim
    q, k, v = torch.randn(3, hq, d), torch.randn(3, hkv, d), torch.randn(3, hkv, d)
    native = RaggedAttention([(kv, i, 1) for i, kv in enumerate(kvs)], hq, 0.125, use_native=True)
    plain = RaggedAttention([(kv, i, 1) for i, kv in enumerate(twins)], hq, 0.125, use_native=False)
    assert native.kernel is not None and plain.kernel is None
    got, want = torch.empty(3, hq, d), torch.empty(3, hq, d)
    native(1, q, k, v, got)
    plain(1, q, k, v, want)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for kv, twin in zip(kvs, twins):
        pos = kv.length
        assert torch.equal(kv.data[1, :, :, pos], twin.data[1, :, :, pos])


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_engine_logits_are_bit_identical_batched_or_alone(tiny_model, kv_dtype):
    runner = ModelRunner(tiny_model.model, kv_dtype=kv_dtype)
    prompts = [list(range(10 + i, 30 + 3 * i)) for i in range(6)]
    alone = []
    for p in prompts:
        kv = runner.new_kv()
        runner.forward([ForwardItem(kv, p, False)])
        alone.append(runner.forward([ForwardItem(kv, [7], True)])[0])
    kvs = [runner.new_kv() for _ in prompts]
    runner.forward([ForwardItem(kv, p, False) for kv, p in zip(kvs, prompts)])
    batched = runner.forward([ForwardItem(kv, [7], True) for kv in kvs])
    for a, b in zip(alone, batched):
        assert torch.equal(a, b)


def test_fallback_runner_agrees_with_native(tiny_model):
    ids = list(range(50, 90))
    out = []
    for native in (True, False):
        runner = ModelRunner(tiny_model.model, native=native)
        kv = runner.new_kv()
        runner.forward([ForwardItem(kv, ids, False)])
        out.append(runner.forward([ForwardItem(kv, [5], True)])[0])
    torch.testing.assert_close(out[0], out[1], atol=1e-4, rtol=1e-4)
    assert F.cosine_similarity(out[0], out[1], dim=0) > 0.9999


@pytest.mark.parametrize("heads", [(6, 2), (10, 2), (4, 4)])  # query heads per KV head: 3, 5 (4 + 1), 1
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 64, 128, 256])  # 64, 128 and 256 take the vector paths, 16 the plain one
def test_decode_attention_kernel_matches_sdpa_for_any_length_and_a_shared_prefix(head_dim, kv_dtype, heads):
    torch.manual_seed(head_dim)
    layers, (hq, hkv) = 2, heads
    lengths = (0, 1, 15, 16, 17, 100, 333)  # cached positions before the new token
    kvs = []
    for n in lengths:
        kv = SessionKV(layers, hkv, head_dim, kv_dtype, n + 1)
        kv.data.normal_()
        kv.token_ids = list(range(n))
        if n > 40:
            kv.share(37)  # the first 37 positions read from a shared prefix buffer
        kvs.append(kv)
    twins = []
    for kv in kvs:
        twin = SessionKV(layers, hkv, head_dim, kv_dtype, kv.length + 1)
        twin.data[:, :, :, :kv.length] = kv.positions(0, kv.length)
        twin.token_ids = list(kv.token_ids)
        twins.append(twin)
    b = len(lengths)
    q, k, v = torch.randn(b, hq, head_dim), torch.randn(b, hkv, head_dim) * 3, torch.randn(b, hkv, head_dim)
    native = RaggedAttention([(kv, i, 1) for i, kv in enumerate(kvs)], hq, head_dim ** -0.5, use_native=True)
    assert native.kernel is not None
    got, want = torch.empty(b, hq, head_dim), torch.empty(b, hq, head_dim)
    native(1, q, k, v, got)
    RaggedAttention([(kv, i, 1) for i, kv in enumerate(twins)], hq, head_dim ** -0.5, use_native=False)(1, q, k, v, want)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    alone = torch.empty(1, hq, head_dim)
    RaggedAttention([(kvs[-1], 0, 1)], hq, head_dim ** -0.5, use_native=True)(1, q[-1:], k[-1:], v[-1:], alone)
    assert torch.equal(alone[0], got[-1]), "a sequence's output must not depend on the rest of the batch"


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_layer_ops_match_the_torch_formulas(rows):
    torch.manual_seed(rows)
    native, plain = LayerOps(1e-5, torch.nn.SiLU(), "silu"), LayerOps(1e-5, torch.nn.SiLU(), "silu", use_native=False)
    assert native.kernels is not None and plain.kernels is None
    hidden, delta, weight = torch.randn(rows, 70) * 4, torch.randn(rows, 70), torch.rand(70) + 0.5  # 70: vector tails
    h1, h2 = hidden.clone(), hidden.clone()
    torch.testing.assert_close(native.add_rms_norm(h1, delta, weight), plain.add_rms_norm(h2, delta, weight))
    torch.testing.assert_close(h1, h2)  # the residual stream updated in place
    torch.testing.assert_close(native.add_rms_norm(h1, None, weight), F.rms_norm(h2, (70,), weight, 1e-5))

    hq, hkv, d = 6, 2, 64
    qkv, angles = torch.randn(rows, hq + 2 * hkv, d), torch.rand(rows, d) * 6
    for got, want in zip(native.rotary_qkv(qkv, angles.cos(), angles.sin(), hq, hkv),
                         plain.rotary_qkv(qkv, angles.cos(), angles.sin(), hq, hkv)):
        assert got.is_contiguous()
        torch.testing.assert_close(got, want)

    gate_up = torch.randn(rows, 2 * 100) * 30  # large magnitudes: exp over- and underflow
    torch.testing.assert_close(native.gated(gate_up), plain.gated(gate_up))
    assert torch.equal(native.gated(gate_up[-1:]), native.gated(gate_up)[-1:]), "rows must not depend on the batch"

    gelu = torch.nn.GELU(approximate="tanh")  # Gemma's gelu_pytorch_tanh
    native, plain = LayerOps(1e-6, gelu, "gelu_pytorch_tanh"), LayerOps(1e-6, gelu, "gelu_pytorch_tanh", use_native=False)
    for scale in (30, 1, 0.01):  # saturated tanh, the curve, near 0
        x = (gate_up * scale).double()
        u = (2 / torch.pi) ** 0.5 * (x[:, :100] + 0.044715 * x[:, :100] ** 3)
        exact = x[:, :100] / (1 + torch.exp(-2 * u)) * x[:, 100:]  # 0.5 x (1 + tanh u) * up, in float64
        for ops in (native, plain):  # ours and torch's float32 rounding, alike
            torch.testing.assert_close(ops.gated(gate_up * scale).double(), exact, rtol=2e-5, atol=1e-5 * scale)
    assert torch.equal(native.gated(gate_up[-1:]), native.gated(gate_up)[-1:]), "rows must not depend on the batch"


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_ragged_attention_of_short_chunks_matches_causal_sdpa(head_dim, kv_dtype):
    """Several new rows per sequence (a next message): row r sees its cache and new rows 0..r only."""
    torch.manual_seed(head_dim + 1)
    layers, hq, hkv = 2, 6, 2
    cases = [(0, 7), (3, 1), (30, 22), (90, 64), (150, 17)]  # (cached positions, new rows)
    kvs, twins, seqs, first = [], [], [], 0
    for cached, rows in cases:
        kv = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        kv.data.normal_()
        kv.token_ids = list(range(cached))
        if cached > 80:
            kv.share(41)
        twin = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        twin.data[:, :, :, :cached] = kv.positions(0, cached)
        twin.token_ids = list(kv.token_ids)
        kvs.append(kv)
        twins.append(twin)
        seqs.append(first)
        first += rows
    t = first
    q, k, v = torch.randn(t, hq, head_dim), torch.randn(t, hkv, head_dim), torch.randn(t, hkv, head_dim)
    got, want = torch.full((t, hq, head_dim), float("nan")), torch.empty(t, hq, head_dim)
    rows = [n for _, n in cases]
    RaggedAttention(list(zip(kvs, seqs, rows)), hq, head_dim ** -0.5, use_native=True)(1, q, k, v, got)
    RaggedAttention(list(zip(twins, seqs, rows)), hq, head_dim ** -0.5, use_native=False)(1, q, k, v, want)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    for kv, twin, (cached, n) in zip(kvs, twins, cases):
        torch.testing.assert_close(kv.positions(cached, cached + n)[1], twin.positions(cached, cached + n)[1])


@pytest.mark.parametrize("weights,kv_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                              (torch.bfloat16, torch.float16)])
def test_one_call_for_all_layers_is_bit_identical_to_the_per_operation_loop(tiny_model, weights, kv_dtype):
    """engine/kernels/csrc/layers.c chains the same kernels as ModelRunner's loop: same logits, same caches."""
    fused = ModelRunner(tiny_model.model, weights, kv_dtype=kv_dtype)
    looped = ModelRunner(tiny_model.model, weights, kv_dtype=kv_dtype)
    if weights == torch.bfloat16 and not _cpu_has("avx512_bf16"):
        assert fused._fused is None  # bf16 weights go through torch on this CPU: no one-call path
        return
    assert fused._fused is not None
    looped._fused = None
    results = []
    for runner in (fused, looped):
        kvs = [runner.new_kv() for _ in range(3)]
        runner.forward([ForwardItem(kv, list(range(10 + i, 90 + i)), False) for i, kv in enumerate(kvs)])  # long: loop
        steps = [runner.forward([ForwardItem(kvs[0], [5], True), ForwardItem(kvs[1], list(range(7, 30)), True),
                                 ForwardItem(kvs[2], [9], True)]) for _ in range(3)]
        results.append((steps, [kv.positions(0, kv.length) for kv in kvs]))
    (steps_a, kv_a), (steps_b, kv_b) = results
    assert all(torch.equal(a, b) for a, b in zip(steps_a, steps_b))
    assert all(torch.equal(a, b) for a, b in zip(kv_a, kv_b))


def _tiny_qwen2(seed: int):
    """A 2-layer random Qwen2 with random q/k/v biases (its init zeroes them), large enough to matter."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False)
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.normal_(0, 0.5)
    return model


PROMPT, FOLLOW = list(range(3, 12)), [7, 8, 9]


def _one_call_and_loop(model, activations: str, codes=None) -> list[torch.Tensor]:
    """Two sessions (a 9- and a 2-token prompt, then 3 decode steps together) through the one-call layers
    and through the per-operation loop: the one-call path's logits of each step, after checking that the
    loop gives the same bits. (A runner given codes leaves its model's other matrices on the meta device:
    one model copy each.)"""
    fused, looped = (ModelRunner(copy.deepcopy(model), activations=activations, codes=codes) for _ in range(2))
    assert fused._fused is not None
    looped._fused = None
    out = []
    for runner in (fused, looped):
        kvs = [runner.new_kv() for _ in range(2)]
        runner.forward([ForwardItem(kvs[0], PROMPT, False), ForwardItem(kvs[1], [4, 5], False)])
        out.append([runner.forward([ForwardItem(kv, [token], True) for kv in kvs]) for token in FOLLOW])
    assert all(torch.equal(a, b) for a, b in zip(*out))
    return out[0]


@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_qwen2_attention_biases_take_the_one_call_path_bit_identically(activations):
    """A Qwen2 layer's q/k/v biases are added inside layers.c as the per-operation loop adds them."""
    model = _tiny_qwen2(5)
    steps = _one_call_and_loop(model, activations)
    if activations == "float32":
        reference = model(torch.tensor([PROMPT + FOLLOW])).logits[0, -1]
        torch.testing.assert_close(steps[-1][0], reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activations", ["float32", "int16"])
def test_a_v_projection_in_another_block_type_is_computed_apart_bit_identically(activations):
    """Q4_K_M files store some layers' v in another block type than q and k: those cannot be one matrix of
    codes, so v is its own; the one-call path and the per-operation loop still give the same bits."""
    import numpy as np
    from gguf import GGMLQuantizationType, dequantize, quantize

    from engine.model.gguf_codes import codes_from_blocks

    model = _tiny_qwen2(6)
    codes = {}
    for i, layer in enumerate(model.model.layers):
        for name, kind in (("q_proj", "Q4_1"), ("k_proj", "Q4_1"), ("v_proj", "Q8_0")):
            proj = getattr(layer.self_attn, name)
            raw = quantize(proj.weight.numpy(), GGMLQuantizationType[kind])
            proj.weight.copy_(torch.from_numpy(dequantize(raw, GGMLQuantizationType[kind]).reshape(proj.weight.shape)))
            codes[f"model.layers.{i}.self_attn.{name}.weight"] = codes_from_blocks(kind, np.asarray(raw))
    assert ModelRunner(copy.deepcopy(model), codes=codes)._layers[0].v is not None
    steps = _one_call_and_loop(model, activations, codes)
    if activations == "float32":  # and it is the model's own projection
        reference = model(torch.tensor([PROMPT + FOLLOW])).logits[0, -1]
        torch.testing.assert_close(steps[-1][0], reference, atol=1e-4, rtol=1e-4)


def test_float16_kv_takes_half_the_bytes_and_stays_close_to_float32(tiny_model):
    """What the float16 cache changes: bytes halve, logits move by float16 rounding of keys/values only."""
    out = {}
    for dtype in (torch.float32, torch.float16):
        runner = ModelRunner(tiny_model.model, kv_dtype=dtype)
        kv = runner.new_kv()
        runner.forward([ForwardItem(kv, list(range(20, 120)), False)])
        out[dtype] = (runner.forward([ForwardItem(kv, [5], True)])[0], kv.token_bytes, kv.data.dtype)
    (a, bytes32, d32), (b, bytes16, d16) = out[torch.float32], out[torch.float16]
    assert (d32, d16) == (torch.float32, torch.float16) and bytes16 * 2 == bytes32
    assert not torch.equal(a, b)  # the rounding is real...
    torch.testing.assert_close(a, b, atol=2e-2, rtol=1e-2)  # ...and small
    assert int(a.argmax()) == int(b.argmax())


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim,hq,hkv", [(64, 9, 3), (128, 4, 1), (16, 6, 2)])
def test_blocked_attention_of_long_chunks_matches_causal_sdpa(head_dim, hq, hkv, kv_dtype):
    """A long prefill chunk (engine/kernels/csrc/chunk_attention.c): row r sees its cache and new rows 0..r,
    across key blocks, query blocks and a shared prefix. (head_dim 16 is narrower than the kernel's
    64-column strip with AVX-512: there it goes to SDPA, and must agree just the same.)"""
    torch.manual_seed(head_dim + hq)
    layers = 2
    for cached, rows, shared in [(0, 65, 0), (0, 300, 0), (37, 130, 0), (200, 97, 120), (64, 64, 64)]:
        kv = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        kv.data.normal_()
        kv.token_ids = list(range(cached))
        if shared:
            kv.share(shared)
        twin = SessionKV(layers, hkv, head_dim, kv_dtype, cached + rows)
        twin.data[:, :, :, :cached] = kv.positions(0, cached)
        twin.token_ids = list(kv.token_ids)
        q = torch.randn(rows, hq, head_dim) * 2  # large scores: the running max must move
        k, v = torch.randn(rows, hkv, head_dim), torch.randn(rows, hkv, head_dim)
        got = prefill_attention(kv, 1, cached, q, k, v, head_dim ** -0.5, use_native=True)
        want = prefill_attention(twin, 1, cached, q, k, v, head_dim ** -0.5, use_native=False)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(kv.positions(0, cached + rows)[1], twin.positions(0, cached + rows)[1])  # layer 1
    assert chunk_attention_kernel(kv, True) is not None and chunk_attention_kernel(kv, False) is None
