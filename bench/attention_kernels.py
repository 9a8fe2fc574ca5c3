"""Attention kernels against their references, interleaved in one process (this machine is noisy).

  * long prefill chunks: engine/kernels/csrc/chunk_attention.c against SDPA with a prefix-causal mask (what the
    engine falls back to), one layer of a 512-token chunk after 0..1,536 cached tokens; GFLOP/s counts
    the causal work (4 x head_dim FLOPs per query head and visible key);
  * decoding: the ragged kernel (engine/kernels/csrc/attention.c) for 16 sessions x 30 layers at 300..2,000
    cached tokens, as GB/s of KV read, next to this machine's read bandwidth (a 1 GiB sum).

SmolLM2-135M's shapes (9 query heads, 3 KV heads, head_dim 64), float16 KV (the server's default).
Run: .venv/bin/python bench/attention_kernels.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m chatserver does

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.step_profile import MachineFloors, machine_line  # noqa: E402
from engine.kernels import prefill_attention, RaggedAttention  # noqa: E402
from engine.kv import SessionKV  # noqa: E402

HQ, HKV, D, LAYERS = 9, 3, 64, 30


def _kv(cached: int, room: int, layers: int) -> SessionKV:
    kv = SessionKV(layers, HKV, D, torch.float16, cached + room)
    kv.data.normal_()
    kv.token_ids = list(range(cached))
    return kv


def chunks(repeats: int) -> None:
    n = 512
    print(f"\nOne layer of a {n}-token prefill chunk (median ms of {repeats}, kernel and SDPA alternated)\n")
    print("| cached tokens | chunk kernel | SDPA + mask | SDPA / kernel | kernel GFLOP/s |")
    print("|---:|---:|---:|---:|---:|")
    for cached in (0, 512, 1024, 1536):
        kv = _kv(cached, n, 2)
        q, k, v = torch.randn(n, HQ, D), torch.randn(n, HKV, D), torch.randn(n, HKV, D)
        times = {True: [], False: []}
        for _ in range(repeats):
            for native in (True, False):
                start = time.perf_counter()
                prefill_attention(kv, 1, cached, q, k, v, D ** -0.5, use_native=native)
                times[native].append(time.perf_counter() - start)
        ours, sdpa = statistics.median(times[True]), statistics.median(times[False])
        flops = 4 * D * HQ * sum(cached + r + 1 for r in range(n))
        print(f"| {cached} | {ours * 1e3:.1f} ms | {sdpa * 1e3:.1f} ms | {sdpa / ours:.2f}x | {flops / ours / 1e9:.0f} |")


def decoding(repeats: int, bandwidth: float) -> None:
    print(f"\n16 sessions decoding, attention of all {LAYERS} layers (median of {repeats}); machine read "
          f"bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    print("| cached tokens per session | ms | KV read GB/s | share of the bandwidth |")
    print("|---:|---:|---:|---:|")
    for cached in (300, 1000, 2000):
        kvs = [_kv(cached, 8, LAYERS) for _ in range(16)]
        q, k, v = torch.randn(16, HQ, D), torch.randn(16, HKV, D), torch.randn(16, HKV, D)
        out = torch.empty(16, HQ, D)
        attention = RaggedAttention([(kv, i, 1) for i, kv in enumerate(kvs)], HQ, D ** -0.5, use_native=True)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for layer in range(LAYERS):
                attention(layer, q, k, v, out)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        nbytes = 16 * cached * LAYERS * 2 * HKV * D * 2
        print(f"| {cached} | {seconds * 1e3:.1f} | {nbytes / seconds / 1e9:.1f} | {nbytes / seconds / bandwidth:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    floors = MachineFloors.measure()
    print(machine_line(floors))
    chunks(args.repeats)
    decoding(args.repeats, floors.bandwidth)


if __name__ == "__main__":
    main()
