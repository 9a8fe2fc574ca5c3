"""KV restore after a restart: next-turn time to first token (TTFT) from RAM, from disk, and recomputed.

Part 1 (restore). For histories of about 512, 1,024 and 2,048 tokens it builds --repeats sessions
each (one long pasted first message, max_tokens 16, temperature 0) on a fresh server, then plays
one short follow-up turn (max_tokens 8) per session in each case:
  turn 2  KV in RAM                   same server
  turn 3  KV read back from disk      after SIGTERM (the shutdown writes data/kv/*.safetensors) and a
                                      new start on the same data dir; resume hello, wait --think
                                      seconds (the prefetch runs meanwhile), send the turn
  turn 4  same, immediate send        another restart; the user frame goes out as soon as the session
                                      frame arrives: the worst case for the prefetch
  turn 5  recomputed                  restart with --no-kv-reuse
Before every restart the KV files are dropped from the OS page cache (posix_fadvise DONTNEED), so
"disk" means the disk, not a copy in RAM; --warm-cache skips that. Each server first answers a
throwaway one-token turn, so one-off warm-up costs are not billed to the first session. Reported:
the server's timings.ttft_ms (from queued to first token) and the client's wall time (user frame
sent to first token frame received), medians over repeats, and the KV file bytes per size.

Part 2 (--lag, on by default; --no-lag skips it). A server with --spill-on-disconnect holds 3
sessions of ~2,000 tokens; a 4th session streams a 200-token answer twice: once undisturbed
(control), once while the 3 big sessions disconnect one after another, each disconnect writing its
~90 MB KV to disk. Reported: client-side inter-token gaps (ms) before / during / after the spills.

Run from the repository root (about 10 minutes on 2 CPU cores):

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
import sys
import tempfile
import time
from pathlib import Path

import websockets
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
READY = "chatserver ready on http://"
TEMPLATE_TOKENS = 48  # chat template, system prompt, answer and follow-up around the pasted text
SENTENCES = (
    "The quarterly report covers the migration of the billing service to the new cluster. "
    "Latency at the 99th percentile fell from 480 to 210 milliseconds after the database moved closer to the "
    "application servers. Two incidents happened in March: a certificate expired on a Sunday night, and a "
    "configuration change disabled retries for the payment gateway for forty minutes. Both were resolved "
    "without data loss, but about 1,300 customers saw failed payments and had to try again. The team added an "
    "alert thirty days before any certificate expires and a review step for gateway configuration changes. "
    "Costs rose by 12 percent because the old and new clusters ran in parallel for six weeks; they should drop "
    "below the previous level in the next quarter once the old cluster is shut down. Hiring is behind plan: "
    "one of three open positions was filled, and the on-call rotation still has only five people. Next quarter "
    "the team wants to split the invoice generator out of the monolith, add idempotency keys to every payment "
    "call, and run a disaster recovery exercise in which a whole region is switched off for an afternoon. "
).split(". ")
FOLLOW_UPS = ["Thanks. One more question: what is the main point?", "Can you say that in one sentence?",
              "And what should the team do first?", "Is there anything risky in the plan?"]
COUNT = "Count from 1 to 300, one number after the other, separated by commas."


def pasted_text(tokenizer: Tokenizer, target: int, tag: str) -> str:
    """A pasted report of about `target` prompt tokens once wrapped in the chat template."""
    parts, i = [f"Please read this report ({tag}) and answer my questions about it."], 0
    while len(tokenizer.encode(" ".join(parts)).ids) < target - TEMPLATE_TOKENS:
        parts.append(SENTENCES[i % len(SENTENCES)].strip() + ".")
        i += 1
    return " ".join(parts)


class Server:
    def __init__(self, data_dir: Path, args: argparse.Namespace, *flags: str):
        self.data_dir, self.model_cache, self.flags = data_dir, args.model_cache, flags

    async def __aenter__(self) -> Server:
        cmd = [sys.executable, "-m", "chatserver", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir",
               str(self.data_dir), "--model-cache", str(self.model_cache), "--log-level", "WARNING", *self.flags]
        with open(self.data_dir / "server.log", "ab") as log:  # a file: an unread pipe could block the server
            self.proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=log)
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout=300)).decode().strip()
        if not line.startswith(READY):
            sys.exit(f"server did not start: {line!r}\n{(self.data_dir / 'server.log').read_text()[-2000:]}")
        self.url = "ws://" + line[len(READY):] + "/ws"
        async with Chat(self.url) as chat:  # warm-up turn
            await chat.hello()
            await chat.turn("Hi", 1)
        return self

    async def __aexit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        if await asyncio.wait_for(self.proc.wait(), timeout=120) != 0:
            print(f"warning: server exited with {self.proc.returncode}", file=sys.stderr)


class Chat:
    def __init__(self, url: str):
        self.url = url

    async def __aenter__(self) -> Chat:
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
    return data_dir / "kv" / (hashlib.sha256(session_id.encode()).hexdigest()[:40] + ".safetensors")


def drop_page_cache(data_dir: Path) -> None:
    for path in (data_dir / "kv").glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


async def restore_part(args: argparse.Namespace, tokenizer: Tokenizer) -> None:
    cases = [("ram", (), 0.0), ("disk", (), args.think), ("disk_now", (), 0.0), ("recompute", ("--no-kv-reuse",), 0.0)]
    with tempfile.TemporaryDirectory(prefix="restore_bench_") as tmp:
        data = Path(tmp)
        sessions = []  # (size, session frame)
        res: dict[tuple[int, str], list[dict]] = {}
        kv_bytes: dict[int, int] = {}
        for n, (case, flags, think) in enumerate(cases):
            if n == 1:  # what the first restart reads back
                for size, s in sessions:
                    kv_bytes[size] = kv_bytes.get(size, 0) + kv_file(data, s["session_id"]).stat().st_size
            if n and not args.warm_cache:
                drop_page_cache(data)
            print(f"case {case} ...", file=sys.stderr, flush=True)
            async with Server(data, args, *flags) as server:
                if not n:  # build the histories
                    for size in args.sizes:
                        for r in range(args.repeats):
                            async with Chat(server.url) as chat:
                                s = await chat.hello()
                                done = await chat.turn(pasted_text(tokenizer, size, f"copy {r + 1}"), 16)
                                sessions.append((size, s))
                                print(f"  built {size}: prompt_tokens {done['usage']['prompt_tokens']}, "
                                      f"prefill {done['timings']['prefill_ms']:.0f} ms", file=sys.stderr, flush=True)
                for size, s in sessions:
                    async with Chat(server.url) as chat:
                        await chat.hello(session_id=s["session_id"], resume_token=s["resume_token"])
                        await asyncio.sleep(think)
                        done = await chat.turn(FOLLOW_UPS[n], 8)
                    expected = {"ram": "ram", "disk": "disk", "disk_now": "disk", "recompute": "miss"}[case]
                    if done["cache"] != expected:
                        print(f"  warning: {case} turn of a {size} session reports cache={done['cache']!r}", file=sys.stderr)
                    res.setdefault((size, case), []).append(done)
        report_restore(args, res, kv_bytes)


def med(runs: list[dict], get) -> float:
    return statistics.median(get(d) for d in runs)


def report_restore(args: argparse.Namespace, res: dict, kv_bytes: dict[int, int]) -> None:
    ttft, wall, tokens = (lambda d: d["timings"]["ttft_ms"]), (lambda d: d["wall_ms"]), (lambda d: d["usage"]["prompt_tokens"])
    print(f"\nnext-turn TTFT, median of {args.repeats} sessions per size (ms); page cache "
          f"{'kept' if args.warm_cache else 'dropped'} before restarts; think time {args.think} s")
    print("| history tokens | RAM ttft ms | disk ttft ms (server) | disk wall ms (immediate send) "
          "| recompute ttft ms | recompute/disk | disk/RAM |\n|---:|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for size in args.sizes:
        get = lambda case, f: med(res[size, case], f)  # noqa: E731
        row = rows[size] = {"ram": get("ram", ttft), "disk": get("disk", ttft), "now": get("disk_now", wall),
                            "rec": get("recompute", ttft)}
        print(f"| {get('disk', tokens):,.0f} | {row['ram']:.1f} | {row['disk']:.1f} | {row['now']:.1f} | {row['rec']:.1f} "
              f"| {row['rec'] / row['disk']:.1f}x | {row['disk'] / row['ram']:.2f}x |")
    print("\ndetails (medians): prompt tokens per case (RAM/disk/immediate/recompute), cached tokens on disk turns, "
          "client wall ms, KV files")
    print("| size | prompt tokens | cached (disk) | RAM wall | disk wall (after think) | immediate: server ttft "
          "| recompute wall | KV files (MB, total) |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        get = lambda case, f: med(res[size, case], f)  # noqa: E731
        prompts = "/".join(f"{get(c, tokens):.0f}" for c in ("ram", "disk", "disk_now", "recompute"))
        print(f"| {size} | {prompts} | {get('disk', lambda d: d['usage']['cached_tokens']):.0f} | {get('ram', wall):.1f} "
              f"| {get('disk', wall):.1f} | {get('disk_now', ttft):.1f} | {get('recompute', wall):.1f} "
              f"| {kv_bytes.get(size, 0) / 1e6:.1f} |")
    big = rows[max(args.sizes)]
    print(f"\ntargets at {max(args.sizes)} tokens: recompute/disk = {big['rec'] / big['disk']:.1f}x (>= 10x: "
          f"{'met' if big['rec'] >= 10 * big['disk'] else 'NOT met'}); disk/RAM = {big['disk'] / big['ram']:.2f}x "
          f"(<= 2x: {'met' if big['disk'] <= 2 * big['ram'] else 'NOT met'}); TTFT after restart "
          f"{big['disk']:.0f} ms server, {big['now']:.0f} ms client with immediate send "
          f"(< 150 ms: {'met' if max(big['disk'], big['now']) < 150 else 'NOT met'})")


async def stream(chat: Chat, on_token=None) -> list[float]:
    done = await chat.turn(COUNT, 200, on_token)
    if done["finish_reason"] != "length":
        print(f"  warning: the streamed answer ended early ({done['finish_reason']})", file=sys.stderr)
    return done["arrivals"]


def gap_stats(arrivals: list[float], lo: int, hi: int) -> str:
    """Median and max of the gaps that end at token index lo..hi-1 (index 0 is the first token)."""
    gaps = [(arrivals[k] - arrivals[k - 1]) * 1000 for k in range(max(lo, 1), min(hi, len(arrivals)))]
    return f"{len(gaps)} | {statistics.median(gaps):.1f} | {max(gaps):.1f}" if gaps else "0 | - | -"


async def lag_part(args: argparse.Namespace, tokenizer: Tokenizer) -> None:
    print("lag: spill on disconnect while another session streams ...", file=sys.stderr, flush=True)
    disconnect_at = (40, 55, 70)  # token counts of the streamed answer at which a big session leaves
    with tempfile.TemporaryDirectory(prefix="restore_lag_") as tmp:
        data = Path(tmp)
        async with Server(data, args, "--spill-on-disconnect") as server, contextlib.AsyncExitStack() as stack:
            big = [await stack.enter_async_context(Chat(server.url)) for _ in range(3)]
            files = []
            for i, chat in enumerate(big):
                files.append(kv_file(data, (await chat.hello())["session_id"]))
                await chat.turn(pasted_text(tokenizer, 2000, f"big {i + 1}"), 16)
            async with Chat(server.url) as chat:
                await chat.hello()
                control = await stream(chat)
            first, closing = [], []

            def on_token(n: int) -> None:
                if n in disconnect_at:
                    first.append(time.perf_counter())
                    closing.append(asyncio.create_task(big[disconnect_at.index(n)].ws.close()))

            async def watch_files() -> float:  # the spill window ends when the third file is renamed in place
                while not all(f.exists() for f in files):
                    await asyncio.sleep(0.002)
                return time.perf_counter()

            watcher = asyncio.create_task(watch_files())
            async with Chat(server.url) as chat:
                await chat.hello()
                spilled = await stream(chat, on_token)
            last = await asyncio.wait_for(watcher, timeout=60)
            await asyncio.gather(*closing)
    lo, hi = disconnect_at[0], sum(a <= last for a in spilled)  # token indices of the spill window
    print(f"\ninter-token gaps of a 200-token stream (client, ms); 3 sessions of ~2,000 tokens disconnect at tokens "
          f"{', '.join(map(str, disconnect_at))}; spills done {(last - first[0]) * 1000:.0f} ms after the first "
          f"disconnect (3rd file in place), i.e. during tokens {lo}-{hi}; control: same token windows, no spills")
    print("| run | window | gaps | median ms | max ms |\n|---|---|---:|---:|---:|")
    for name, arrivals in (("control", control), ("spills", spilled)):
        for window, a, b in (("before", 0, lo), ("during", lo, hi + 1), ("after", hi + 1, 999), ("all", 0, 999)):
            print(f"| {name} | {window} | {gap_stats(arrivals, a, b)} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="sessions per size (default 3)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024, 2048])
    parser.add_argument("--think", type=float, default=1.0, help="seconds between resume and turn 3 (default 1.0)")
    parser.add_argument("--warm-cache", action="store_true", help="leave the KV files in the OS page cache")
    parser.add_argument("--lag", action=argparse.BooleanOptionalAction, default=True, help="run part 2 (default on)")
    parser.add_argument("--model-cache", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(str(next(args.model_cache.glob("*/tokenizer.json"))))
    await restore_part(args, tokenizer)
    if args.lag:
        await lag_part(args, tokenizer)


if __name__ == "__main__":
    asyncio.run(main())
