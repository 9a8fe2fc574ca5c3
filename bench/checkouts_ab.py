"""Two checkouts of this repository, A and B, timed on the same forward passes in alternating processes:
does a change (a refactor, a kernel) make a step slower beyond the machine's noise?

Each round runs one process per checkout, in alternating order, each timing the server's default engine
(weights from their GGUF codes, int16 activations, float16 KV) on: one session decoding (median ms per
step over 150 steps after a 300-token prompt), 16 sessions decoding (60 steps), and one 512-token
prefill chunk. Prints every round and the medians with B / A ratios. Both checkouts use this Python
environment; a checkout from before the package reorganisation (engine/runner.py) is recognised.

Run: .venv/bin/python bench/checkouts_ab.py A_DIR B_DIR [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODEL_CACHE, cpu_summary  # noqa: E402

PROBE = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
try:
    from engine.model import ForwardItem, ModelRunner, load_model
except ImportError:  # the layout before the package reorganisation
    from engine.loader import load_model
    from engine.runner import ForwardItem, ModelRunner
try:
    loaded = load_model(None, __import__("pathlib").Path(sys.argv[2]), in_place=False)
except TypeError:  # a checkout without in-place loading
    loaded = load_model(None, __import__("pathlib").Path(sys.argv[2]))
runner = ModelRunner(loaded.model, torch.float32,
                     kv_dtype=torch.float16, activations="int16")

def decode(batch, steps):
    kvs = [runner.new_kv(600) for _ in range(batch)]
    runner.forward([ForwardItem(kv, list(range(100, 400)), False) for kv in kvs])
    times = []
    for i in range(steps):
        started = time.perf_counter()
        runner.forward([ForwardItem(kv, [7 + i], True) for kv in kvs])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)

decode(1, 20)
one, sixteen = decode(1, 150), decode(16, 60)
kv = runner.new_kv(600)
started = time.perf_counter()
runner.forward([ForwardItem(kv, list(range(100, 612)), True)])
print(json.dumps([one, sixteen, (time.perf_counter() - started) * 1000]))
"""
MEASURES = ("one session decode, ms/step", "16 sessions decode, ms/step", "512-token prefill chunk, ms")


def run(checkout: Path, model_cache: Path) -> list[float]:
    env = {"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"}  # as the server runs (chatserver/__main__.py)
    out = subprocess.run([sys.executable, "-c", PROBE, str(checkout), str(model_cache)], capture_output=True,
                         text=True, check=True, cwd=checkout, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--model-cache", type=Path, default=MODEL_CACHE)
    args = parser.parse_args()
    results: dict[str, list[list[float]]] = {"A": [], "B": []}
    print(f"machine: {cpu_summary()}\nA: {args.a.resolve()}\nB: {args.b.resolve()}\n")
    for r in range(args.rounds):
        order = [("A", args.a), ("B", args.b)] if r % 2 == 0 else [("B", args.b), ("A", args.a)]
        for name, checkout in order:
            figures = run(checkout.resolve(), args.model_cache)
            results[name].append(figures)
            print(f"round {r + 1} {name}: " + ", ".join(f"{v:.2f}" for v in figures), flush=True)
    print("\n| measure | A, median | B, median | B / A |\n|---|---:|---:|---:|")
    for i, measure in enumerate(MEASURES):
        a = statistics.median(f[i] for f in results["A"])
        b = statistics.median(f[i] for f in results["B"])
        print(f"| {measure} | {a:.2f} | {b:.2f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
