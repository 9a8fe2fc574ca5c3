"""Forward-pass speed of our engine against the transformers eager loop, same weights, one run.

For each: one-session decode (ms per step, tokens/s), 16 sessions decoding together (aggregate
tokens/s), and the prefill of a 2,000-token prompt (seconds, tokens/s). Ours is ModelRunner (packed
batch, C kernels, the server's defaults: weights read from their exact Q4_1/Q8_0 codes against int16
activations; again with float32 activations (bit-exact) and from float32 panels, and on AMX machines the prefill without the tiles, to show what each
brings); the baseline is transformers' model(...) with its KV cache,
float32, greedy, the way `generate` steps. Medians of --repeats; ratios are baseline time / ours.

With --llama-bench PATH (llama.cpp's llama-bench binary, built on this machine) the same run also
measures llama.cpp on the model's own GGUF file (tg: one sequence decoding, pp: prompt processing of
the same prompt length), so that the peer's figures come from this machine too.

Run: .venv/bin/python bench/engine_speed.py [--dtype float32|bfloat16] [--kv-dtype float16|float32]
     [--activations int16|float32] [--steps 32]
     [--repeats 3] [--llama-bench PATH [--llama-bench-args="--repack 0"]]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Each side under its best OpenMP setting: ours as `python -m chatserver` runs it (workers sleep between
# torch operations, leaving the cores to engine/kernels/csrc/pool.c); the transformers baseline in a child
# process with OpenMP's default (spinning workers suit its long chains of torch operations).
if "--baseline-only" not in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument  # noqa: E402
from bench.step_profile import MachineFloors, machine_line, print_profile, profile, weights_label  # noqa: E402

from engine.kernels import ACTIVATIONS, amx_tiles  # noqa: E402
from engine.kv import KV_DTYPES  # noqa: E402
from engine.model import MATMUL_DTYPES, ForwardItem, load_model, ModelRunner  # noqa: E402

PROMPT = 40  # tokens already cached before decoding starts


def ours_decode(runner: ModelRunner, batch: int, steps: int) -> float:
    """ms per step, `batch` sessions each decoding one token per step."""
    kvs = [runner.new_kv() for _ in range(batch)]
    runner.forward([ForwardItem(kv, list(range(100 + i, 100 + i + PROMPT)), False) for i, kv in enumerate(kvs)])
    start = time.perf_counter()
    for _ in range(steps):
        runner.forward([ForwardItem(kv, [7], True) for kv in kvs])
    return (time.perf_counter() - start) * 1000 / steps


def ours_prefill(runner: ModelRunner, tokens: int, chunk: int = 512) -> float:
    """Seconds to prefill `tokens` in chunks of `chunk` (as the scheduler does when nobody decodes)."""
    kv = runner.new_kv(tokens)
    ids = [(i * 7919) % 40000 + 100 for i in range(tokens)]
    start = time.perf_counter()
    for i in range(0, tokens, chunk):
        runner.forward([ForwardItem(kv, ids[i:i + chunk], i + chunk >= tokens)])
    return time.perf_counter() - start


@torch.inference_mode()
def hf_decode(model, batch: int, steps: int) -> float:
    ids = torch.tensor([list(range(100 + i, 100 + i + PROMPT)) for i in range(batch)])
    cache = DynamicCache()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - start) * 1000 / steps


@torch.inference_mode()
def hf_prefill(model, tokens: int) -> float:
    ids = torch.tensor([[(i * 7919) % 40000 + 100 for i in range(tokens)]])
    start = time.perf_counter()
    model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(MATMUL_DTYPES), default="float32")
    parser.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default="float16", help="the server's default")
    parser.add_argument("--activations", choices=ACTIVATIONS, default="int16", help="the server's default")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prefill-tokens", type=int, default=2000)
    add_model_cache_argument(parser)
    parser.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench, to measure it in the same run")
    parser.add_argument("--llama-bench-args", default="", metavar="ARGS",
                        help='more arguments for llama-bench, one string: --llama-bench-args="--repack 0" on AMX '
                             "CPUs, where its weight-repack path dies with SIGILL")
    parser.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(None, args.model_cache, in_place=False)  # float: transformers runs it too

    def median(fn, *a) -> float:
        return statistics.median(fn(*a) for _ in range(args.repeats))

    n = args.prefill_tokens
    if args.baseline_only:
        hf_decode(loaded.model, 1, 2)  # warm-up
        print(json.dumps([median(hf_decode, loaded.model, 1, args.steps), median(hf_decode, loaded.model, 16, args.steps),
                          median(hf_prefill, loaded.model, n)]))
        return
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    child = subprocess.run([sys.executable, __file__, "--baseline-only", *sys.argv[1:]], env=env, check=True,
                           capture_output=True, text=True)
    hf1, hf16, hf_p = json.loads(child.stdout.strip().splitlines()[-1])
    peer = None
    if args.llama_bench:
        peer = llama_cpp(args.llama_bench, n, args.repeats, shlex.split(args.llama_bench_args))

    dtype, kv = MATMUL_DTYPES[args.dtype], KV_DTYPES[args.kv_dtype]
    variants = {"ours": ModelRunner(loaded.model, dtype, kv_dtype=kv, activations=args.activations)}
    if variants["ours"]._lm_head.grid is not None:  # also the other activations, and without the grid codes
        other = "float32" if args.activations == "int16" else "int16"
        variants[f"ours, {other} activations"] = ModelRunner(loaded.model, dtype, kv_dtype=kv, activations=other)
        variants["ours, float32 panels"] = ModelRunner(loaded.model, dtype, kv_dtype=kv, grid_codes=False)
    rows = []
    for label, runner in variants.items():
        runner.warmup()
        ours1 = median(ours_decode, runner, 1, args.steps)
        rows.append((f"{label}: one session decode, ms/step", ours1, hf1, f"{1000 / ours1:.1f} vs {1000 / hf1:.1f} tok/s"))
        ours16 = median(ours_decode, runner, 16, args.steps)
        rows.append((f"{label}: 16 sessions decode, ms/step", ours16, hf16,
                     f"{16000 / ours16:.0f} vs {16000 / hf16:.0f} tok/s aggregate"))
        ours_p = median(ours_prefill, runner, n)
        rows.append((f"{label}: {n}-token prefill, s", ours_p, hf_p, f"{n / ours_p:.0f} vs {n / hf_p:.0f} tok/s"))
        if label == "ours" and runner.activations == "int16" and amx_tiles():  # what the tiles bring
            amx_tiles(False)
            try:
                vector_p = median(ours_prefill, runner, n)
            finally:
                amx_tiles(True)
            rows.append((f"{label}, vector units only (no AMX tiles): {n}-token prefill, s", vector_p, hf_p,
                         f"{n / vector_p:.0f} vs {n / hf_p:.0f} tok/s"))

    runner = variants["ours"]
    floors = MachineFloors.measure({torch.float32, runner.matmul_dtype})
    print(f"\n{machine_line(floors)}")
    print(f"ours: ModelRunner, {args.dtype} linear layers ({weights_label(runner)}), {args.kv_dtype} KV; baseline: "
          f"transformers eager loop, float32 (own process, OpenMP default); median of {args.repeats}, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| measure | ours | transformers | ratio (transformers / ours) | rates |")
    print("|---|---:|---:|---:|---|")
    for name, ours, base, rates in rows:
        print(f"| {name} | {ours:.2f} | {base:.2f} | {base / ours:.2f}x | {rates} |")
    if peer is not None:
        tg, pp = peer
        print(f"\nllama.cpp on this machine (llama-bench, same GGUF, 2 threads): one sequence decoding {tg:.1f} tok/s "
              f"(ours {1000 / rows[0][1]:.1f}: {1000 / rows[0][1] / tg:.2f}x), {n}-token prompt {pp:.0f} tok/s "
              f"(ours {n / rows[2][1]:.0f}: {n / rows[2][1] / pp:.2f}x)")
    print_profile(profile(runner, floors, args.repeats), floors, weights_label(runner))


def llama_cpp(binary: Path, prompt: int, repeats: int, extra: list[str]) -> tuple[float, float]:
    """(tg128 tok/s, pp<prompt> tok/s) from llama-bench on the default model's GGUF file, 2 threads."""
    from engine.model import default_gguf_path

    # llama.cpp runs in its own default environment: this process's OMP_WAIT_POLICY=PASSIVE (good for our
    # kernel pool) puts ggml's OpenMP workers to sleep between the many small regions of a decode step,
    # which made its decode 2.5x slower on a Zen 4
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([str(binary), "-m", str(default_gguf_path()), "-t", "2", "-p", str(prompt), "-n", "128",
                          "-r", str(repeats), "-o", "json", *extra], check=True, capture_output=True, text=True,
                         env=env).stdout
    results = {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in json.loads(out)}  # one row per test
    return results["tg"], results["pp"]


if __name__ == "__main__":
    main()
