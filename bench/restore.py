"""KV restore after a restart: next-turn time to first token (TTFT) from RAM, from disk, and recomputed.

Part 1 (restore). For histories of about 512, 1,024 and 2,048 tokens it builds --repeats sessions
each (one long pasted first message, max_tokens 16, temperature 0) on a fresh server, then plays
one short follow-up turn (max_tokens 8) per session in each case, each time on a new connection:
resume hello, wait --think seconds (a person typing; the prefetch runs meanwhile), send the turn.
  turn 2  KV in RAM                   same server
  turn 3  KV read back from disk      after SIGTERM (the shutdown writes data/kv/) and a
                                      new start on the same data dir
  turn 4  same, immediate send        another restart; the user frame goes out as soon as the session
                                      frame arrives, without think time: the worst case for the prefetch
  turn 5  recomputed                  restart with --no-kv-reuse (that server still reads the KV file
                                      back at resume, then ignores it: the think time hides that)
Before every restart the KV files are dropped from the OS page cache (posix_fadvise DONTNEED), so
"disk" means the disk, not a copy in RAM; --warm-cache skips that. Each server first answers a
throwaway one-token turn, so one-off warm-up costs are not billed to the first session. Reported:
the server's timings.ttft_ms (from queued to first token) and the client's wall time (user frame
sent to first token frame received), medians over repeats, and the KV file bytes per size.

Part 2 (--lag, on by default; --no-lag skips it). A server with --spill-on-disconnect holds 3
sessions of ~2,000 tokens; another session streams a 200-token answer undisturbed (control), then
a fresh one streams the same answer while the 3 big sessions disconnect one after another, each
disconnect writing its ~95 MB KV to disk; --repeats times (the big sessions come back and take a
turn in between, so that they are written again). Reported: client-side inter-token gaps (ms)
before / during / after the spills, pooled over the repeats.

Run from the repository root (about 5 minutes on 2 CPU cores, best on an otherwise idle machine):

    .venv/bin/python bench/restore.py [--repeats 3] [--sizes 512,1024,2048] [--think 1.0] [--no-lag]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import websockets
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary, prepared_tokenizer  # noqa: E402
from storage import chunk_names  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

OVERHEAD = 120  # prompt tokens of turn 3 besides the pasted text: template and system prompt, turns 1-2, turn 3
SENTENCES = (  # the pasted report, repeated as often as needed
    "The billing service moved to the new cluster this quarter. Latency at the 99th percentile fell from 480 to 210 "
    "milliseconds. In March a certificate expired on a Sunday night, and a configuration change disabled retries "
    "for the payment gateway for forty minutes, so about 1,300 customers had to pay again. Costs rose by 12 percent "
    "while both clusters ran in parallel. One of three open positions was filled. Next quarter the team wants to "
    "split the invoice generator out of the monolith and run a disaster recovery exercise. "
).split(". ")
FOLLOW_UPS = ["Thanks. One more question: what is the main point?", "Can you say that in one sentence?",
              "And what should the team do first?", "Is there anything risky in the plan?"]
COUNT = "Count from 1 to 300, one number after the other, separated by commas."


def pasted_text(tokenizer: Tokenizer, target: int, tag: str) -> str:
    """A pasted report such that the prompt of turn 3 (the disk case) has about `target` tokens."""
    parts, i = [f"Please read this report ({tag}) and answer my questions about it."], 0
    while len(tokenizer.encode(" ".join(parts)).ids) < target - OVERHEAD:
        parts.append(SENTENCES[i % len(SENTENCES)].strip() + ".")
        i += 1
    return " ".join(parts)


class Server:
    """`python -m chatserver serve` on `data_dir` (its warnings go to stderr), warmed up by a one-token turn."""

    def __init__(self, data_dir: Path, args: argparse.Namespace, *flags: str):
        self.server = RealServer(data_dir, args.model_cache, "--host", "127.0.0.1", *flags)

    async def __aenter__(self) -> Self:
        # on 2 cores, timings are only meaningful on an otherwise idle machine
        pgrep = ["pgrep", "-f", "chatserver serve|pytest"]
        if others := subprocess.run(pgrep, capture_output=True, text=True, check=False).stdout.split():
            print(f"warning: {len(others)} other server or test processes are running", file=sys.stderr)
        await asyncio.to_thread(self.server.start)
        self.url = self.server.ws_url
        async with Chat(self.url) as chat:
            await chat.hello()
            await chat.turn("Hi", 1)
        return self

    async def __aexit__(self, *exc) -> None:
        if (code := await asyncio.to_thread(self.server.stop, signal.SIGTERM, 120)) != 0:
            print(f"warning: server exited with {code}", file=sys.stderr)


class Chat:
    def __init__(self, url: str):
        self.url = url

    async def __aenter__(self) -> Self:
        self.ws = await websockets.connect(self.url, max_size=None)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def hello(self, **resume) -> dict:
        await self.ws.send(json.dumps({"type": "hello", **resume}))
        frame = json.loads(await self.ws.recv())
        assert frame["type"] == "session", frame
        return frame

    async def turn(self, content: str, max_tokens: int, on_token=None) -> dict:
        """One turn; the done frame plus wall_ms (sent to first token) and arrivals (perf_counter per token)."""
        t0 = time.perf_counter()
        await self.ws.send(json.dumps({"type": "user", "content": content, "max_tokens": max_tokens, "temperature": 0}))
        arrivals = []
        while (frame := json.loads(await self.ws.recv()))["type"] == "token":
            arrivals.append(time.perf_counter())
            if on_token:
                on_token(len(arrivals))
        assert frame["type"] == "done", frame
        return {**frame, "wall_ms": ((arrivals or [time.perf_counter()])[0] - t0) * 1000, "arrivals": arrivals}


def kv_file(data_dir: Path, session_id: str) -> Path:
    """The session's manifest: replaced (a new inode) when a spill of the session is complete."""
    return data_dir / "kv" / "sessions" / (hashlib.sha256(session_id.encode()).hexdigest()[:40] + ".json")


def kv_bytes_of(data_dir: Path, session_id: str) -> int:
    """Bytes of the session's manifest and of every chunk it names (docs/KV_FORMAT.md)."""
    manifest = kv_file(data_dir, session_id)
    m = json.loads(manifest.read_bytes())
    names = chunk_names(m["model_fingerprint"], m["dtype"], m["token_ids"], m["chunk_tokens"])
    return manifest.stat().st_size + sum((data_dir / "kv" / "chunks" / f"{n}.safetensors").stat().st_size for n in names)


def drop_page_cache(data_dir: Path) -> None:
    for path in (data_dir / "kv").rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


async def restore_part(args: argparse.Namespace, tokenizer: Tokenizer) -> None:
    cases = [("ram", (), args.think, "ram"), ("disk", (), args.think, "disk"), ("disk_now", (), 0.0, "disk"),
             ("recompute", ("--no-kv-reuse",), args.think, "miss")]  # name, server flags, think time, expected cache
    res: dict[tuple[int, str], list[dict]] = {}
    kv_bytes: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="restore_bench_") as tmp:
        data, sessions = Path(tmp), []  # (size, session frame)
        for n, (case, flags, think, expected) in enumerate(cases):
            if n == 1:  # what the first restart reads back
                for size, s in sessions:
                    kv_bytes[size] = kv_bytes.get(size, 0) + kv_bytes_of(data, s["session_id"])
            if n and not args.warm_cache:
                drop_page_cache(data)
            print(f"case {case} ...", file=sys.stderr, flush=True)
            async with Server(data, args, *flags) as server:
                for size in args.sizes if n == 0 else ():  # build the histories
                    for r in range(args.repeats):
                        async with Chat(server.url) as chat:
                            sessions.append((size, await chat.hello()))
                            done = await chat.turn(pasted_text(tokenizer, size, f"copy {r + 1}"), 16)
                        print(f"  built {size}: prompt_tokens {done['usage']['prompt_tokens']}, "
                              f"prefill {done['timings']['prefill_ms']:.0f} ms", file=sys.stderr, flush=True)
                for size, s in sessions:
                    async with Chat(server.url) as chat:
                        await chat.hello(session_id=s["session_id"], resume_token=s["resume_token"])
                        await asyncio.sleep(think)
                        done = await chat.turn(FOLLOW_UPS[n], 8)
                    res.setdefault((size, case), []).append(done)
                    print(f"  {case} {size}: prompt {done['usage']['prompt_tokens']}, cached "
                          f"{done['usage']['cached_tokens']}, cache {done['cache']}, ttft {done['timings']['ttft_ms']:.1f}"
                          f" ms, wall {done['wall_ms']:.1f} ms", file=sys.stderr, flush=True)
                    if done["cache"] != expected:
                        print(f"  warning: expected cache={expected!r}", file=sys.stderr)
    report_restore(args, res, kv_bytes)


def report_restore(args: argparse.Namespace, res: dict, kv_bytes: dict[int, int]) -> None:
    def m(size: int, case: str, field: str) -> float:  # median over the repeats
        get = {"ttft": lambda d: d["timings"]["ttft_ms"], "wall": lambda d: d["wall_ms"],
               "prompt": lambda d: d["usage"]["prompt_tokens"], "cached": lambda d: d["usage"]["cached_tokens"]}[field]
        return statistics.median(get(d) for d in res[size, case])

    def main_row(size: int) -> tuple[float, float, float, float]:  # RAM, disk, disk immediate (client), recompute
        return m(size, "ram", "ttft"), m(size, "disk", "ttft"), m(size, "disk_now", "wall"), m(size, "recompute", "ttft")

    print(f"\nnext-turn TTFT (ms), medians of {args.repeats} sessions per size; KV files "
          f"{'left in' if args.warm_cache else 'dropped from'} the page cache before restarts; think time {args.think} s")
    print("| history tokens | RAM ttft ms | disk ttft ms (server) | disk wall ms (immediate send) | recompute ttft ms "
          "| recompute/disk | disk/RAM |\n|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        ram, disk, now, rec = main_row(size)
        print(f"| {m(size, 'disk', 'prompt'):,.0f} | {ram:.1f} | {disk:.1f} | {now:.1f} | {rec:.1f} | {rec / disk:.1f}x "
              f"| {disk / ram:.2f}x |")
    print("\nmore: prompt tokens of the RAM/disk/immediate/recompute turns, client wall times (ms), KV file bytes")
    print("| size | prompt tokens | cached (disk) | RAM wall | disk wall | immediate: server ttft | recompute wall "
          "| KV files MB (total) |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        prompts = "/".join(f"{m(size, c, 'prompt'):.0f}" for c in ("ram", "disk", "disk_now", "recompute"))
        print(f"| {size} | {prompts} | {m(size, 'disk', 'cached'):.0f} | {m(size, 'ram', 'wall'):.1f} "
              f"| {m(size, 'disk', 'wall'):.1f} | {m(size, 'disk_now', 'ttft'):.1f} | {m(size, 'recompute', 'wall'):.1f} "
              f"| {kv_bytes[size] / 1e6:.1f} |")
    ram, disk, now, rec = main_row(max(args.sizes))
    verdict = lambda ok: "met" if ok else "NOT met"
    print(f"\ntargets at {max(args.sizes)} tokens: recompute/disk {rec / disk:.1f}x (>= 10x: {verdict(rec >= 10 * disk)}); "
          f"disk/RAM {disk / ram:.2f}x (<= 2x: {verdict(disk <= 2 * ram)}); next-turn TTFT after restart "
          f"{disk:.0f} ms (server, after think time), {now:.0f} ms (client, immediate send) (< 150 ms: "
          f"{verdict(disk < 150)} / {verdict(now < 150)})")


async def stream(chat: Chat, on_token=None) -> list[float]:
    done = await chat.turn(COUNT, 200, on_token)
    if done["finish_reason"] != "length":
        print(f"  warning: the streamed answer ended early ({done['finish_reason']})", file=sys.stderr)
    return done["arrivals"]


def file_state(files: list[Path]) -> list[tuple[int, int] | None]:
    """Inode and mtime per file (None: missing); an atomic rewrite changes both."""
    return [(f.stat().st_ino, f.stat().st_mtime_ns) if f.exists() else None for f in files]


async def stream_with_spills(url: str, big: list[Chat], files: list[Path], disconnect_at: tuple[int, ...]):
    """Stream COUNT in a new session, closing big[i] when token disconnect_at[i] arrives. Returns the
    token arrivals and the time (perf_counter) when all files were rewritten."""
    before, closing = file_state(files), []

    def on_token(n: int) -> None:
        if n in disconnect_at:
            closing.append(asyncio.create_task(big[disconnect_at.index(n)].ws.close()))

    async def watch() -> float:  # the spills are done when all files are renamed in place
        while any(a == b for a, b in zip(file_state(files), before)):
            await asyncio.sleep(0.02)
        return time.perf_counter()

    watcher = asyncio.create_task(watch())
    async with Chat(url) as chat:
        await chat.hello()
        arrivals = await stream(chat, on_token)
    last = await asyncio.wait_for(watcher, timeout=60)
    await asyncio.gather(*closing)
    return arrivals, last


async def lag_part(args: argparse.Namespace, tokenizer: Tokenizer) -> None:
    print("lag: spill on disconnect while another session streams ...", file=sys.stderr, flush=True)
    disconnect_at = (40, 55, 70)  # token counts of the streamed answer at which a big session leaves
    control, spilled, windows = [], [], []  # per repeat: token arrivals; (first, last) token index of the spills
    with tempfile.TemporaryDirectory(prefix="restore_lag_") as tmp:
        data = Path(tmp)
        async with Server(data, args, "--spill-on-disconnect") as server, contextlib.AsyncExitStack() as stack:
            big, frames = [], []
            for i in range(3):
                big.append(await stack.enter_async_context(Chat(server.url)))
                frames.append(await big[i].hello())
                await big[i].turn(pasted_text(tokenizer, 2048, f"big {i + 1}"), 16)
            files = [kv_file(data, s["session_id"]) for s in frames]
            for r in range(args.repeats):
                if r:  # bring the big sessions back (read from disk) and give each a turn: their KV is dirty again
                    for i, s in enumerate(frames):
                        big[i] = await stack.enter_async_context(Chat(server.url))
                        await big[i].hello(session_id=s["session_id"], resume_token=s["resume_token"])
                        await big[i].turn(FOLLOW_UPS[r % len(FOLLOW_UPS)], 8)
                async with Chat(server.url) as chat:
                    await chat.hello()
                    control.append(await stream(chat))
                arrivals, last = await stream_with_spills(server.url, big, files, disconnect_at)
                spilled.append(arrivals)
                windows.append((disconnect_at[0], sum(a <= last for a in arrivals)))
                first = arrivals[min(disconnect_at[0], len(arrivals)) - 1]  # the first disconnect
                print(f"  repeat {r + 1}: spills done {(last - first) * 1000:.0f} ms after the first disconnect, "
                      f"stream tokens {windows[-1][0]}-{windows[-1][1]}", file=sys.stderr, flush=True)
    print(f"\ninter-token gaps of a 200-token stream (client, ms), {args.repeats} runs each; 3 sessions of ~2,000 "
          f"tokens disconnect at tokens {', '.join(map(str, disconnect_at))}; 'during' = until the 3rd file is in place "
          f"(tokens {', '.join(f'{a}-{b}' for a, b in windows)}); control: same token windows, no spills")
    print("| run | window | gaps | median ms | max ms |\n|---|---|---:|---:|---:|")
    for name, runs in (("control", control), ("spills", spilled)):
        for window in ("before", "during", "after", "all"):
            gaps = []
            for arrivals, (lo, hi) in zip(runs, windows):
                a, b = {"before": (1, lo), "during": (lo, hi + 1), "after": (hi + 1, 999), "all": (1, 999)}[window]
                gaps += [(arrivals[k] - arrivals[k - 1]) * 1000 for k in range(a, min(b, len(arrivals)))]
            print(f"| {name} | {window} | {len(gaps)} | {statistics.median(gaps or [0]):.1f} | {max(gaps or [0]):.1f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="sessions per size (default 3)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024, 2048])
    parser.add_argument("--think", type=float, default=1.0,
                        help="seconds from resume to the turn, except in the immediate case (default 1.0)")
    parser.add_argument("--warm-cache", action="store_true", help="leave the KV files in the OS page cache")
    parser.add_argument("--lag", action=argparse.BooleanOptionalAction, default=True, help="run part 2 (default on)")
    add_model_cache_argument(parser)
    args = parser.parse_args()
    tokenizer = prepared_tokenizer(args.model_cache)  # sizes the pasted reports; converts the model on first use
    print(f"machine: {cpu_summary()}")
    await restore_part(args, tokenizer)
    if args.lag:
        await lag_part(args, tokenizer)


if __name__ == "__main__":
    asyncio.run(main())
