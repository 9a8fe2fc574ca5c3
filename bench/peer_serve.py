"""Our server against llama.cpp's llama-server: the same OpenAI streaming workload on the same GGUF file.

Both servers run one after the other in one run (never together: the machine has 2 cores), on loopback,
2 threads each (llama-server `-t 2`; ours uses the machine's 2 cores), with the same context budget:
llama-server `-np 16 -c 16*CTX` (16 slots of CTX tokens, float16 KV allocated at start), ours
`--max-context CTX --max-kv-ram-mb` (the bytes of 16*CTX float16 tokens, allocated as sessions grow).
Greedy (temperature 0), `ignore_eos` sent to both (llama-server honours it; ours ignores it, so its
prompts ask for long answers and the token counts are reported). Tokens are the servers' `usage`.
Measured, client-side (official `openai` client), median of --repeats:
  * one stream: decode tok/s of a 64-token answer, (tokens - 1) / (last delta - first delta);
  * 16 concurrent streams: all tokens generated / wall time of the batch;
  * a ~1.5k-token first turn: time from request to first content delta; then the next turn of the same
    conversation (history + answer + a short question): its TTFT, the KV or prompt cache reused;
  * server RSS (VmRSS, children included) when ready, before any request, and after the workload.
It prints a table (ratio = ours / llama.cpp on every row; a column says which side of 1 is better) and
writes bench/results/peer_serve-<model>-<cpu tag>.json.

llama.cpp: `--llama-server PATH`, else a build found under --llama-cache or /work/peers, else built from
the llama.cpp sources of the llama-cpp-python 0.3.36 sdist (cmake -DGGML_NATIVE=ON, ~10 min on 2 cores).
llama.cpp repacks its weights for the CPU (its default, its fastest) except on AMX CPUs, where that path
dies with SIGILL (`--no-repack`); --llama-repack / --llama-no-repack force either.

Run: .venv/bin/python bench/peer_serve.py [--model PATH|CATALOG_NAME] [--repeats 3] [--ctx-per-slot 4096]
     [--llama-server PATH] [--llama-repack | --llama-no-repack] [--no-llama-bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    MODELS_DIR,
    ROOT,
    add_model_cache_argument,
    catalog_gguf,
    cpu_summary,
)
from tests.helpers.real_server import RealServer  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendor/llama.cpp is built
KNOWN_BUILDS = [Path(f"/work/peers/llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/build/bin")]
SLOTS, MAX_TOKENS = 16, 64
SYSTEM = "You are a helpful assistant who writes detailed, complete answers."
TOPICS = ["the ocean", "mountains", "a city at night", "coffee", "trains", "gardening", "chess", "the moon",
          "bicycles", "rain", "libraries", "volcanoes", "bread", "music", "winter", "robots", "bridges", "tea"]
FILLER = """The committee met on a grey morning to review the harbour accounts.
Every ledger had been copied twice by hand, and the copies did not always agree.
A clerk named Ortega found that the grain shipments of spring were recorded in two currencies.
The river had flooded the lower warehouses, so some crates were moved to the chapel.
Nobody could explain why the lighthouse keeper was paid by the barrel.
Merchants from the south complained that the new tariff favoured the wool traders.
The mayor promised a report by the end of the season, which nobody expected to see.
In the archive, mice had eaten the corners of the tax rolls for three consecutive years.
A ship called the Perseverance appears in the records eleven times, always carrying salt.
The bridge tolls paid for a school, a well and, oddly, a brass band.""".splitlines()


def cpu_tag() -> str:
    """The machine kind as bench/results names it, e.g. intel-xeon-amx, amd-epyc-zen4-avx512."""
    with open("/proc/cpuinfo") as cpuinfo:
        info = cpuinfo.read()
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    if "GenuineIntel" in info:
        return "intel-xeon-amx" if "amx_tile" in flags else "intel-avx512" if "avx512f" in flags else "intel-avx2"
    return "amd-epyc-zen4-avx512" if "avx512f" in flags else "amd-epyc-zen3-avx2" if "avx2" in flags else "amd"


def find_or_build_llama_cpp(cache: Path, server: Path | None = None) -> tuple[Path, Path]:
    """(llama-server, llama-bench): `server` and the llama-bench beside it; else an existing build in
    `cache/<cpu tag>/` or a known location; else downloads the llama-cpp-python sdist with pip into `cache`
    and builds both targets there (blocking, ~10 min on 2 cores; -march=native, hence one build per CPU kind)."""
    src = cache / cpu_tag() / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    found = [server.parent] if server else [d for d in [src / "build" / "bin", *KNOWN_BUILDS]
                                            if (d / "llama-server").is_file()]
    if not found:
        print(f"building llama.cpp in {src} (~10 min)", flush=True)
        sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        cache.mkdir(parents=True, exist_ok=True)
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(cache)], check=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(src.parents[2], filter="data")
        subprocess.run(["cmake", "-B", "build", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"],
                       cwd=src, check=True)
        subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "llama-bench", "-j2"], cwd=src,
                       check=True)
        found = [src / "build" / "bin"]
    return (server or found[0] / "llama-server"), found[0] / "llama-bench"


def source_version() -> str | None:
    """The commit of the server code measured (`git describe --always --dirty`), None outside a clone."""
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=False,
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children, bytes."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def long_text(seed: int, sentences: int = 86) -> str:
    """~1.5k tokens of prose; the seed makes its start differ, so no two first turns share a prefix."""
    rng = random.Random(seed)
    return f"Notes, volume {seed}. " + " ".join(rng.choice(FILLER) for _ in range(sentences))


async def stream(api: tuple[openai.AsyncOpenAI, str], messages: list[dict], max_tokens: int = MAX_TOKENS,
                 ignore_eos: bool = True) -> dict:
    """One streamed completion (api: client, served model id): ttft (s), first/last content delta times,
    tokens (usage), prompt and cached tokens (usage), text. ignore_eos: ask llama-server to write
    max_tokens whatever the model says (ours ignores the field)."""
    client, model = api
    sent, first, last, text, usage = time.perf_counter(), None, None, [], None
    async for chunk in await client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": ignore_eos}):
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert first is not None and usage is not None, "an answer without content or usage"
    details = getattr(usage, "prompt_tokens_details", None)
    return {"ttft": first - sent, "first": first, "last": last, "tokens": usage.completion_tokens,
            "prompt": usage.prompt_tokens, "cached": getattr(details, "cached_tokens", None), "text": "".join(text)}


def question(topic: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Write a long, detailed essay about {topic}, with many examples."}]


async def workload(url: str, repeats: int) -> dict:
    """The measures of one server (warmed up by one short request first)."""
    # a connection per request: llama-server closes idle keep-alive connections after 5 s, and a pooled
    # connection closed under the client fails its next request (no retries: they would hide errors)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600,
                                default_headers={"Connection": "close"})
    api = client, (await client.models.list()).data[0].id  # ours refuses another model id
    await stream(api, question("warm-up"), 8)
    one = [await stream(api, question(TOPICS[i % len(TOPICS)])) for i in range(repeats)]
    batches = []
    for r in range(repeats):
        start = time.perf_counter()
        runs = await asyncio.gather(*[stream(api, question(f"{TOPICS[i % len(TOPICS)]} (essay {r}.{i})"))
                                      for i in range(SLOTS)])
        batches.append({"tokens": [x["tokens"] for x in runs], "seconds": time.perf_counter() - start})
    turns = []
    for r in range(repeats):
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": long_text(r) + "\n\nWhat are these notes about? Answer at length."}]
        first = await stream(api, messages)
        messages += [{"role": "assistant", "content": first["text"]},
                     {"role": "user", "content": "Which ship is mentioned, and what did it carry?"}]
        turns.append((first, await stream(api, messages)))
    return {
        "one_stream_tok_per_s": statistics.median((x["tokens"] - 1) / (x["last"] - x["first"]) for x in one),
        "one_stream_tokens": [x["tokens"] for x in one],
        "sixteen_streams_tok_per_s": statistics.median(sum(b["tokens"]) / b["seconds"] for b in batches),
        "sixteen_streams_tokens": sorted({t for b in batches for t in b["tokens"]}),
        "first_turn_ttft_s": statistics.median(f["ttft"] for f, _ in turns),
        "first_turn_prompt_tokens": turns[0][0]["prompt"],
        "next_turn_ttft_s": statistics.median(n["ttft"] for _, n in turns),
        "next_turn_prompt_tokens": turns[0][1]["prompt"], "next_turn_cached_tokens": turns[0][1]["cached"],
    }


def measure(proc: subprocess.Popen, url: str, repeats: int) -> dict:
    """The workload's figures, the server's RSS before and after it, and the machine's 1-minute load
    average before and after (other people's work on the machine shows there)."""
    loaded, load_before = rss_bytes(proc.pid), os.getloadavg()[0]
    figures = asyncio.run(workload(url, repeats))
    return {**figures, "rss_after_load_bytes": loaded, "rss_after_workload_bytes": rss_bytes(proc.pid),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(command: list[str], port: int, log: Path) -> subprocess.Popen:
    """llama-server started with `command` (listening on `port`, its output in `log`), once it is healthy."""
    # its own default OpenMP environment: PASSIVE (ours) makes ggml's workers sleep between small regions
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode} (-4: SIGILL, a build for another "
                               f"CPU or repacking on AMX); its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError("llama-server not ready within 300 s") from None
            time.sleep(0.5)


def run_llama_server(command: list[str], port: int, repeats: int, log: Path) -> dict:
    proc = start_llama_server(command, port, log)
    try:
        return measure(proc, f"http://127.0.0.1:{port}", repeats)
    except Exception:
        print(f"llama-server failed (exit status {proc.poll()}); its log: {log}", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(60)


def run_llama_bench(binary: Path, model: Path, extra: list[str]) -> dict:
    """llama-bench's own pp512 and tg64 (tok/s, 2 threads): the peer's kernels without its server."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([str(binary), "-m", str(model), "-t", "2", "-p", "512", "-n", str(MAX_TOKENS), "-r", "3",
                          "-o", "json", *extra], check=True, capture_output=True, text=True, env=env).stdout
    return {("pp512" if r["n_prompt"] else f"tg{MAX_TOKENS}"): round(r["avg_ts"], 1) for r in json.loads(out)}


def resolve(value: str | None, models_dir: Path) -> tuple[str, Path]:
    """(name for the results file, GGUF path) of --model; a catalog name not present yet is pulled."""
    from engine.model import list_models

    path = catalog_gguf(value, models_dir)
    name = next((s.entry.name for s in list_models(models_dir) if s.path.resolve() == path), path.stem.lower())
    return name, path


def kv_token_bytes(path: Path, model_cache: Path) -> int:
    """Bytes of one token's float16 K and V in all layers (llama-server's default KV type is f16 too), from
    the GGUF header as llama.cpp reads it."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key: str, default=None):
        field = reader.fields.get(key)
        return default if field is None else int(field.parts[field.data[0]][0])

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    heads = value(f"{arch}.attention.head_count")
    head_dim = value(f"{arch}.attention.key_length", value(f"{arch}.embedding_length") // heads)
    kv_heads = value(f"{arch}.attention.head_count_kv", heads)
    return value(f"{arch}.block_count") * 2 * kv_heads * head_dim * 2


ROWS = [("one stream, 64 tokens, tok/s", "one_stream_tok_per_s", 1, "> 1"),
        ("16 streams aggregate, tok/s", "sixteen_streams_tok_per_s", 1, "> 1"),
        ("~1.5k-token first turn TTFT, s", "first_turn_ttft_s", 1, "< 1"),
        ("next turn TTFT, ms", "next_turn_ttft_s", 1000, "< 1"),
        ("server RSS after load, MB", "rss_after_load_bytes", 1e-6, "< 1"),
        ("server RSS after the workload, MB", "rss_after_workload_bytes", 1e-6, "< 1")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or a catalog name (default: the server's default model)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where catalog models are")
    add_model_cache_argument(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens of each of the 16 slots")
    parser.add_argument("--llama-server", type=Path, help="an existing llama-server binary (default: found or built)")
    parser.add_argument("--llama-cache", type=Path, default=ROOT / ".cache" / "llama.cpp", help="sdist and builds")
    repack = parser.add_mutually_exclusive_group()
    repack.add_argument("--llama-repack", action="store_true", default=None, help="let llama.cpp repack weights")
    repack.add_argument("--llama-no-repack", dest="llama_repack", action="store_false",
                        help="no weight repacking (the default on AMX CPUs, where it dies with SIGILL)")
    parser.add_argument("--no-llama-bench", action="store_true", help="skip llama-bench's pp512/tg64")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/peer_serve-<model>-<cpu>.json)")
    args = parser.parse_args()
    if args.llama_repack is None:  # llama.cpp's default, except where it crashes
        args.llama_repack = "amx_tile" not in Path("/proc/cpuinfo").read_text().split()

    name, gguf = resolve(args.model, args.models_dir)
    llama_server, llama_bench = find_or_build_llama_cpp(args.llama_cache, args.llama_server)
    tokens = SLOTS * args.ctx_per_slot
    kv_mb = -(-tokens * kv_token_bytes(gguf, args.model_cache) // (1 << 20))
    port = free_port()
    peer_cmd = [str(llama_server), "-m", str(gguf), "-t", "2", "-np", str(SLOTS), "-c", str(tokens),
                "--host", "127.0.0.1", "--port", str(port), *([] if args.llama_repack else ["--no-repack"])]
    with tempfile.TemporaryDirectory() as data:
        ours_srv = RealServer(Path(data), args.model_cache, "--model", str(gguf), "--max-context",
                              str(args.ctx_per_slot), "--max-kv-ram-mb", str(kv_mb))
        ours_cmd = ours_srv.command()
        ours_srv.start(timeout=600)
        try:
            ours = measure(ours_srv.proc, ours_srv.url, args.repeats)
        finally:
            ours_srv.stop()
    args.llama_cache.mkdir(parents=True, exist_ok=True)
    peer = run_llama_server(peer_cmd, port, args.repeats, args.llama_cache / "llama-server.log")
    bench = None if args.no_llama_bench else run_llama_bench(llama_bench, gguf, [] if args.llama_repack
                                                             else ["--repack", "0"])
    budgets = (f"context budget: {SLOTS} x {args.ctx_per_slot} = {tokens} tokens; llama-server -c {tokens} "
               f"(f16 KV, allocated at start); ours --max-kv-ram-mb {kv_mb} (f16 KV, allocated as sessions grow)")
    print(f"\nmodel: {name} ({gguf}, {gguf.stat().st_size / 1e6:.0f} MB)\nmachine: {cpu_summary()}\n{budgets}")
    print(f"ours: {shlex.join(ours_cmd)}\nllama.cpp: {shlex.join(peer_cmd)}\nmedian of {args.repeats}; "
          "ratio = ours / llama.cpp on every row\n")
    print("| workload | ours | llama.cpp | ratio | ours better when ratio |\n|---|---:|---:|---:|:---:|")
    for label, key, scale, better in ROWS:
        print(f"| {label} | {ours[key] * scale:,.1f} | {peer[key] * scale:,.1f} | {ours[key] / peer[key]:.2f} "
              f"| {better} |")
    for label, key in [("tokens per one-stream answer", "one_stream_tokens"),
                       ("tokens per answer of the 16 (distinct counts)", "sixteen_streams_tokens"),
                       ("first turn prompt tokens", "first_turn_prompt_tokens"),
                       ("next turn prompt tokens", "next_turn_prompt_tokens"),
                       ("next turn cached tokens (usage)", "next_turn_cached_tokens"),
                       ("1-minute load average before/after (2 cores)", "load_average_before_after")]:
        print(f"{label}: ours {ours[key]}, llama.cpp {peer[key]}")
    if bench:
        print(f"llama-bench -t 2 (same GGUF): {', '.join(f'{k} {v} tok/s' for k, v in bench.items())}")

    result = {"model": name, "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "cpu": cpu_summary(),
              "cpu_tag": cpu_tag(), "ours_version": source_version(),
              "commands": {"ours": shlex.join(ours_cmd), "llama_cpp": shlex.join(peer_cmd)},
              "context_budget": budgets, "statistic": f"median of {args.repeats}", "ours": ours, "llama_cpp": peer,
              "ratio_ours_over_llama_cpp": {key: round(ours[key] / peer[key], 3) for _, key, _, _ in ROWS},
              "llama_bench_tok_per_s": bench}
    out = args.out or ROOT / "bench" / "results" / f"peer_serve-{name}-{cpu_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
