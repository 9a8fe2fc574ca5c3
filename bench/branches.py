"""Branches of a ~2k-token conversation: regenerate, edit, and going back to an earlier branch, ours against
llama.cpp's llama-server on the same GGUF file (one slot; its prompt cache is on by default).

Each round (a different long text, so no round reuses another's KV) on each server:
  1. Q1: a ~1.7k-token text and a question about it, then Q2, a short follow-up: a ~2k-token history.
  2. regenerate the answer to Q2. Ours: the `regenerate` frame (a new answer from the KV and logits Q2 left);
     llama.cpp: the same messages again (its slot's cache holds them).
  3. edit Q2. Ours: the `edit` frame; llama.cpp: the history with the edited Q2.
  4. back to the first branch: the original Q2 and its answer, then Q3. Ours: `switch` to that answer, then
     `user`; llama.cpp: the whole original history plus Q3 (its one slot holds the edited branch).
Measured by the client: time to first token (from sending the request to the first token) and the time
per token of the answers; ours also reports its own ttft_ms and decode time per token (done frame),
the prompt and cached tokens of each turn, and its KV RAM (kv.ram.bytes of /api/stats) with one branch
and with two. After the rounds our server stops gracefully, writing every session and kept branch to
disk; the bench then reads the KV folder: the bytes stored (each chunk once) against the bytes the same
KV would take with every branch in a file of its own. Greedy, --max-tokens per answer; medians over --rounds.

Targets (issue 19): a regenerated answer's first token within one decode step of the same session; an edit
computes only the edited question; two branches take RAM of about one conversation plus their tails, and
on disk too.

Run from the repository root (about 5 minutes on 2 cores, plus building llama.cpp once if absent):

    .venv/bin/python bench/branches.py [--model PATH|CATALOG_NAME] [--rounds 5] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODELS_DIR, ROOT, add_model_cache_argument, cpu_summary  # noqa: E402
from bench.peer_serve import (cpu_tag, find_or_build_llama_cpp, free_port, long_text, resolve,  # noqa: E402
                              start_llama_server, stream)
from storage import chunk_names  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

ADMIN = "branches-bench"
Q2, Q2_EDITED, Q3 = ("Which ship is named most often, and what did it carry?",
                     "Which building held the crates after the flood?",
                     "Thank you. Now summarize the whole text in two sentences.")


def q1(seed: int) -> str:
    return long_text(seed, sentences=100) + "\n\nWhat did the committee review, and what did the clerk find?"


class Ours:
    """One WebSocket session on our server; each call returns the turn's measures."""

    def __init__(self, url: str, max_tokens: int):
        self.url, self.max_tokens, self.ws = url, max_tokens, None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url.replace("http://", "ws://") + "/ws", max_size=None)
        await self.ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await self.ws.recv())["type"] == "session"

    async def turn(self, **frame) -> dict:
        sent = time.perf_counter()
        await self.ws.send(json.dumps({"max_tokens": self.max_tokens, "temperature": 0, **frame}))
        first = last = None
        while True:
            f = json.loads(await self.ws.recv())
            if f["type"] == "token":
                last = time.perf_counter()
                first = first or last
            elif f["type"] == "done":
                n = f["usage"]["completion_tokens"]
                return {"ttft_s": first - sent, "per_token_s": (last - first) / max(1, n - 1),
                        "server_ttft_ms": f["timings"]["ttft_ms"],
                        "server_decode_ms": f["timings"]["decode_ms"] / max(1, n - 1),
                        "prompt": f["usage"]["prompt_tokens"], "cached": f["usage"]["cached_tokens"],
                        "message_id": f["message_id"], "user_message_id": f["user_message_id"]}
            elif f["type"] == "error":
                raise RuntimeError(f)

    async def switch(self, message_id: int) -> None:
        await self.ws.send(json.dumps({"type": "switch", "message_id": message_id}))
        assert json.loads(await self.ws.recv())["type"] == "path"

    def kv_ram_bytes(self) -> int:
        request = urllib.request.Request(self.url + "/api/stats", headers={"Authorization": f"Bearer {ADMIN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["kv"]["ram"]["bytes"]


async def ours_round(url: str, seed: int, max_tokens: int) -> dict:
    chat = Ours(url, max_tokens)
    await chat.open()
    before = chat.kv_ram_bytes()  # the earlier rounds' sessions
    await chat.turn(type="user", content=q1(seed))
    asked = await chat.turn(type="user", content=Q2)
    one_branch = chat.kv_ram_bytes()
    regenerated = await chat.turn(type="regenerate")
    two_branches = chat.kv_ram_bytes()
    edited = await chat.turn(type="edit", message_id=asked["user_message_id"], content=Q2_EDITED)
    await chat.switch(asked["message_id"])
    back = await chat.turn(type="user", content=Q3)
    await chat.ws.close()
    return {"ask": asked, "regenerate": regenerated, "edit": edited, "back": back,
            "ram_one_branch": one_branch - before, "ram_two_branches": two_branches - before}


async def _stream(client: openai.AsyncOpenAI, messages: list[dict], max_tokens: int) -> dict:
    """llama-server's answer as the conversation goes on: it stops where the model stops, as ours does."""
    answer = await stream((client, "peer"), messages, max_tokens, ignore_eos=False)
    per_token = (answer["last"] - answer["first"]) / max(1, answer["tokens"] - 1)
    return {**answer, "ttft_s": answer["ttft"], "per_token_s": per_token}


async def peer_round(url: str, seed: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600,
                                default_headers={"Connection": "close"})
    history = [{"role": "user", "content": q1(seed)}]
    first = await _stream(client, history, max_tokens)
    history += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": Q2}]
    asked = await _stream(client, history, max_tokens)
    regenerated = await _stream(client, history, max_tokens)
    edited = await _stream(client, history[:-1] + [{"role": "user", "content": Q2_EDITED}], max_tokens)
    back = await _stream(client, history + [{"role": "assistant", "content": asked["text"]},
                                            {"role": "user", "content": Q3}], max_tokens)
    await client.close()
    return {"ask": asked, "regenerate": regenerated, "edit": edited, "back": back}


def disk_use(kv_dir: Path) -> dict:
    """The KV folder of a stopped server (docs/KV_FORMAT.md): each KV's (session or kept branch) bytes,
    and the bytes stored, every chunk once."""
    chunk_bytes = {p.stem: p.stat().st_size for p in (kv_dir / "chunks").glob("*.safetensors")}
    each = []
    for manifest in (kv_dir / "sessions").glob("*.json"):
        m = json.loads(manifest.read_bytes())
        names = chunk_names(m["model_fingerprint"], m["dtype"], m["token_ids"], m["chunk_tokens"])
        each.append(manifest.stat().st_size + sum(chunk_bytes[n] for n in names))
    stored = sum(chunk_bytes.values()) + sum(p.stat().st_size for p in (kv_dir / "sessions").glob("*.json"))
    return {"kvs": len(each), "each_bytes": sorted(each), "stored_bytes": stored}


def median(rounds: list[dict], step: str, key: str) -> float:
    return statistics.median(r[step][key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or a catalog name (default: the server's default model)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where catalog models are")
    add_model_cache_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--llama-server", type=Path, help="an existing llama-server binary (default: found or built)")
    parser.add_argument("--llama-cache", type=Path, default=ROOT / ".cache" / "llama.cpp", help="sdist and builds")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/branches-<model>-<cpu>.json)")
    args = parser.parse_args()
    name, gguf = resolve(args.model, args.models_dir)
    llama_server, _ = find_or_build_llama_cpp(args.llama_cache, args.llama_server)
    repack = "amx_tile" not in Path("/proc/cpuinfo").read_text().split()

    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), args.model_cache, "--model", str(gguf), "--admin-token", ADMIN).start(600)
        try:
            asyncio.run(ours_round(server.url, 999, args.max_tokens))  # warm-up
            ours = [asyncio.run(ours_round(server.url, seed, args.max_tokens)) for seed in range(args.rounds)]
        finally:
            server.stop()  # graceful: every session and kept branch is written to disk
        disk = disk_use(Path(data) / "kv")
    port = free_port()
    peer_cmd = [str(llama_server), "-m", str(gguf), "-t", "2", "-np", "1", "-c", "4096", "--host", "127.0.0.1",
                "--port", str(port), *([] if repack else ["--no-repack"])]
    args.llama_cache.mkdir(parents=True, exist_ok=True)
    proc = start_llama_server(peer_cmd, port, args.llama_cache / "llama-server-branches.log")
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(peer_round(url, 999, args.max_tokens))
        peer = [asyncio.run(peer_round(url, seed, args.max_tokens)) for seed in range(args.rounds)]
    finally:
        proc.terminate()
        proc.wait(60)

    ms = 1000
    print(f"\nmodel: {name} ({gguf.name}); machine: {cpu_summary()}\nmedian of {args.rounds} rounds; "
          f"{args.max_tokens}-token greedy answers; history before Q2's answer: "
          f"{median(ours, 'ask', 'prompt'):.0f} prompt tokens (ours)\n")
    print("| step | ours TTFT ms | llama.cpp TTFT ms | ratio | ours cached / prompt | llama.cpp cached / prompt |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, label in (("ask", "Q2 (goes on)"), ("regenerate", "regenerate Q2's answer"),
                        ("edit", "edit Q2"), ("back", "back to Q2's first answer, then Q3")):
        o, p = median(ours, step, "ttft_s") * ms, median(peer, step, "ttft_s") * ms
        print(f"| {label} | {o:.1f} | {p:.1f} | {o / p:.2f} | {median(ours, step, 'cached'):.0f} / "
              f"{median(ours, step, 'prompt'):.0f} | {median(peer, step, 'cached'):.0f} / "
              f"{median(peer, step, 'prompt'):.0f} |")
    decode = median(ours, "regenerate", "server_decode_ms")
    regen = median(ours, "regenerate", "server_ttft_ms")
    print(f"\nours, server side: regenerate ttft {regen:.1f} ms against {decode:.1f} ms per decode step of the "
          f"same answer: {regen / decode:.2f} steps (target <= 1)")
    print(f"time per token (client): ours {median(ours, 'ask', 'per_token_s') * ms:.1f} ms, "
          f"llama.cpp {median(peer, 'ask', 'per_token_s') * ms:.1f} ms")
    one = statistics.median(r["ram_one_branch"] for r in ours)
    two = statistics.median(r["ram_two_branches"] for r in ours)
    print(f"ours KV RAM of the conversation: {one / 1e6:.1f} MB with one branch, {two / 1e6:.1f} MB with two "
          f"(+{(two - one) / 1e6:.1f} MB: the new answer's tail, counted by 256-token capacity steps)")

    conversations = args.rounds + 1  # and the warm-up
    print(f"ours KV on disk after a graceful stop: {disk['kvs']} KVs (sessions and kept branches) of "
          f"{conversations} conversations: {sum(disk['each_bytes']) / 1e6:.1f} MB as whole files, "
          f"{disk['stored_bytes'] / 1e6:.1f} MB stored ({disk['stored_bytes'] / sum(disk['each_bytes']):.2f}); "
          f"largest KV {disk['each_bytes'][-1] / 1e6:.1f} MB, so {disk['stored_bytes'] / conversations / 1e6:.1f} MB "
          f"per conversation of {disk['kvs'] / conversations:.0f} branches")

    result = {"model": name, "gguf": str(gguf), "cpu": cpu_summary(), "cpu_tag": cpu_tag(),
              "rounds": args.rounds, "max_tokens": args.max_tokens,
              "commands": {"ours": " ".join(server.command()), "llama_cpp": " ".join(peer_cmd)},
              "ours": ours, "ours_disk": disk, "llama_cpp": [{k: {kk: vv for kk, vv in v.items() if kk != "text"}
                                           for k, v in r.items()} for r in peer]}
    out = args.out or ROOT / "bench" / "results" / f"branches-{name}-{cpu_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
