"""Where the time of one forward pass goes, against this machine's floors (issue 8's "profile of one step").

Runs ModelRunner's per-operation layer loop (the same kernels the one-call path chains, plus a Python
call per operation) with a timer around each kind of operation: the linear layers (q/k/v, o, gate/up,
down: 30 x 4 weight matrices), the LM head, attention, the small per-token ops (RMSNorm, rotary, SiLU)
and the rest (embedding, rotary tables, packing the batch, Python). Next to them, the two floors no
implementation with these weights can beat, measured on this machine at start: reading every weight
once per pass, as stored (grid codes, float32 or bf16 panels), at the memory bandwidth of a 1 GiB sum;
and the matmul arithmetic (2 x parameters x rows; the LM head only for rows whose logits are wanted) at
torch's best 2048^3 matmul rate in that dtype. (On the machine of ../shared/PERF-NOTES.md: 35 GB/s,
183 GFLOP/s float32, 411 bfloat16.) Steps: one session decoding, 16 sessions decoding, one 512-token
prefill chunk (the unit of a long prompt).

With --model (a catalog name or a GGUF path) the model is loaded in place, its matrices read from the
file's block codes, exactly as the server loads it; the one-call path's total (the server's, for decode
steps) is shown beside the per-operation loop's, and the linear layers' achieved integer rate (GOP/s).

Run: .venv/bin/python bench/step_profile.py [--model NAME|PATH] [--dtype float32|bfloat16] [--kv-dtype float16]
     [--repeats 5] [--no-grid-codes]
(bench/engine_speed.py prints the same table after its own.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m chatserver does

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODELS_DIR, add_model_cache_argument, catalog_gguf, cpu_summary  # noqa: E402
import engine.model.runner as runner_module  # noqa: E402
from engine.kernels import ACTIVATIONS, LayerOps, Linear, RaggedAttention  # noqa: E402
from engine.kv import KV_DTYPES  # noqa: E402
from engine.model import MATMUL_DTYPES, ForwardItem, load_model, ModelRunner  # noqa: E402

CONTEXT = 40  # cached tokens of each decoding session


@dataclass(frozen=True)
class MachineFloors:
    bandwidth: float  # bytes/s, best of 3 sums of a 1 GiB float32 tensor
    peak: dict  # dtype -> FLOP/s, best of 3 torch 2048^3 matmuls
    # median over 5 alternations of (one 1024^3 matmul on 2 threads / on 1 thread)'s speed: ~2 when both
    # cores are ours; on the AVX2 test machine it swings between ~1.0 and ~1.9 from one minute to the
    # next (the host lends the second core unevenly), which is the noise in every figure taken there
    two_threads: float

    @classmethod
    def measure(cls, dtypes=(torch.float32,)) -> MachineFloors:
        big = torch.ones(1 << 28)
        bandwidth = max(big.numel() * 4 / _seconds(big.sum) for _ in range(3))
        del big
        peak = {}
        for dtype in dtypes:
            a = torch.randn(2048, 2048).to(dtype)
            peak[dtype] = max(2 * 2048 ** 3 / _seconds(lambda: a @ a) for _ in range(3))
        return cls(bandwidth, peak, _two_thread_speedup())


def _two_thread_speedup() -> float:
    a = torch.randn(1024, 1024)
    threads, ratios = torch.get_num_threads(), []
    try:
        for _ in range(5):
            torch.set_num_threads(1)
            one = min(_seconds(lambda: a @ a) for _ in range(3))
            torch.set_num_threads(2)
            ratios.append(one / min(_seconds(lambda: a @ a) for _ in range(3)))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(ratios)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine_line(floors: MachineFloors) -> str:
    from engine.kernels import strip_width
    peaks = ", ".join(f"{p / 1e9:.0f} GFLOP/s {str(d).removeprefix('torch.')}" for d, p in floors.peak.items())
    return (f"machine: {cpu_summary()} (kernel strips of {strip_width()} columns); measured "
            f"{floors.bandwidth / 1e9:.1f} GB/s, {peaks} (torch matmul), 2 threads {floors.two_threads:.2f}x one")


class _Timers:
    """Patches the operation classes so that each call adds its wall time to a category."""

    def __init__(self, vocab: int):
        self.ms: dict[str, float] = defaultdict(float)
        self.vocab = vocab
        self._saved = []

    def _wrap(self, owner, name: str, category) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        timers = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            what = category(args) if callable(category) else category
            timers.ms[what] += (time.perf_counter() - start) * 1000
            return out

        setattr(owner, name, timed)

    def __enter__(self):
        self._wrap(Linear, "__call__", lambda a: "LM head" if a[0].out_features == self.vocab else "linear layers")
        self._wrap(RaggedAttention, "__call__", "attention")
        self._wrap(runner_module, "prefill_attention", "attention")
        for op in ("add_rms_norm", "rotary_qkv", "gated"):
            self._wrap(LayerOps, op, "norms, rotary, activation")
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def _weights(runner: ModelRunner) -> tuple[int, int, int]:
    """(parameters of the decoder layers' matmuls, of the LM head, bytes of both as a step reads them)."""
    layers = [lin for w in runner._layers for lin in (w.qkv, w.v, w.o, w.gate_up, w.down) if lin is not None]
    head = runner._lm_head
    return (sum(lin.in_features * lin.out_features for lin in layers), head.in_features * head.out_features,
            runner.weights_summary()["bytes"])


STEPS = (("1 session decoding", 1, 1), ("16 sessions decoding", 16, 1), ("512-token prefill chunk", 1, 512))


def profile(runner: ModelRunner, floors: MachineFloors, repeats: int = 5) -> list[tuple[str, dict[str, float], float, float]]:
    """Per step kind: (name, median ms per category incl. "total" (the per-operation loop), "one call" (the
    server's path: layers.c's one call where the step allows it), "GOP/s" (the linear layers' rate);
    weight-read floor ms, FLOP floor ms)."""
    layer_params, head_params, nbytes = _weights(runner)
    rows = []
    for name, batch, new in STEPS:
        runs = []
        for _ in range(repeats):
            fused, runner._fused = runner._fused, None  # time the per-operation loop
            timers = _Timers(runner.vocab_size)
            try:
                total = _step_ms(runner, batch, new, timers)
            finally:
                runner._fused = fused
            timers.ms["other"] = total - sum(timers.ms.values())
            timers.ms["total"] = total
            timers.ms["one call"] = _step_ms(runner, batch, new)
            timers.ms["GOP/s"] = 2 * layer_params * batch * new / timers.ms["linear layers"] / 1e6
            runs.append(dict(timers.ms))
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
        flops = 2 * (layer_params * batch * new + head_params * batch)  # logits of each sequence's last row
        rows.append((name, med, nbytes / floors.bandwidth * 1000, flops / floors.peak[runner.matmul_dtype] * 1000))
    return rows


def _step_ms(runner: ModelRunner, batch: int, new: int, timers: _Timers | None = None) -> float:
    """Wall ms of one step of `batch` sessions with CONTEXT cached tokens each, `new` tokens each (its
    operations timed by `timers`, if given)."""
    kvs = [runner.new_kv(CONTEXT + new) for _ in range(batch)]
    runner.forward([ForwardItem(kv, list(range(100 + i, 100 + i + CONTEXT)), False) for i, kv in enumerate(kvs)])
    with timers or contextlib.nullcontext():
        start = time.perf_counter()
        runner.forward([ForwardItem(kv, list(range(7, 7 + new)), True) for kv in kvs])
        return (time.perf_counter() - start) * 1000


def print_profile(rows, floors: MachineFloors, weights: str) -> None:
    cats = ["linear layers", "LM head", "attention", "norms, rotary, activation", "other"]
    print(f"\nWhere one forward pass goes (per-operation loop, ms, median). Floors for {weights}: reading "
          f"them once at {floors.bandwidth / 1e9:.1f} GB/s, and the matmul FLOPs at the machine's torch matmul rate\n")
    print("| step | one call | per-op total | " + " | ".join(cats) + " | linear layers, GOP/s "
          "| floor: weight read | floor: matmul FLOPs |")
    print("|---|---:|---:|" + "---:|" * len(cats) + "---:|---:|---:|")
    for name, med, read_floor, flop_floor in rows:
        print(f"| {name} | {med['one call']:.1f} | {med['total']:.1f} | "
              + " | ".join(f"{med.get(c, 0.0):.1f}" for c in cats)
              + f" | {med['GOP/s']:.0f} | {read_floor:.1f} | {flop_floor:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(MATMUL_DTYPES), default="float32")
    parser.add_argument("--kv-dtype", choices=sorted(KV_DTYPES), default="float16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-grid-codes", action="store_true", help="float32 panels even for weights on a GGUF grid")
    parser.add_argument("--activations", choices=ACTIVATIONS, default="int16", help="the server's default")
    parser.add_argument("--model", help="a catalog name or GGUF path, loaded in place as the server loads it")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="where catalog models are (a name not there is pulled)")
    add_model_cache_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model is not None:
        loaded = load_model(str(catalog_gguf(args.model, args.models_dir)), args.model_cache)
        runner = ModelRunner(loaded.model, MATMUL_DTYPES[args.dtype], kv_dtype=KV_DTYPES[args.kv_dtype],
                             activations=args.activations, codes=loaded.codes, embedding_rows=loaded.embedding_rows)
        print(f"model: {loaded.name} ({runner.family.name}), {runner.weights_summary()}")
    else:
        runner = ModelRunner(load_model(None, args.model_cache, in_place=False).model, MATMUL_DTYPES[args.dtype],
                             kv_dtype=KV_DTYPES[args.kv_dtype], grid_codes=not args.no_grid_codes,
                             activations=args.activations)
    runner.warmup()
    floors = MachineFloors.measure({torch.float32, runner.matmul_dtype})
    print(machine_line(floors))
    print_profile(profile(runner, floors, args.repeats), floors, weights_label(runner))


def weights_label(runner: ModelRunner) -> str:
    if runner._lm_head.grid is not None:
        formats = "/".join(sorted(runner.weights_summary()["formats"]))
        return f"weights read from their block codes ({formats}), {runner.activations} activations"
    return f"{str(runner.matmul_dtype).removeprefix('torch.')} weight panels"


if __name__ == "__main__":
    main()
