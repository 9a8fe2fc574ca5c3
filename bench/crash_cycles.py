"""Crash safety: kill -9 the server at random moments, many times in a row, restarting it each time.

Each cycle starts the server on the same data directory, runs a few clients (turns, disconnects that
spill KV to disk, resumes) and kills it: in odd cycles after a random delay while an operator spills a
session every 0.1 s through the admin API (during generation, a spill write or a commit), in even ones
a few milliseconds after asking for the spill of a long conversation (during its file's write). After each restart it checks: the SQLite file passes `PRAGMA integrity_check`; no temporary
KV file is left in the data directory; every user message whose answer had started streaming (the
server stores it before the first token) is in the transcript; and one resumed session answers
greedily exactly as transformers' generate() does on its stored transcript (so no wrong KV is used).

Run: .venv/bin/python bench/crash_cycles.py [--cycles 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument  # noqa: E402
from engine.model import ChatMessage, greedy_answer, load_model  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

ADMIN = "crash-admin"
LONG = "Here are my notes from the meeting about the harbour project. " * 40  # a longer prompt: bigger spills


async def client(url: str, sessions: dict, n: int, stop: float) -> None:
    """Turns on a new or known session until stop (or the server dies); records acknowledged messages."""
    rng = random.Random(n)
    while time.monotonic() < stop:
        known = [s for s in sessions.values() if s["token"]]
        try:
            async with websockets.connect(url, max_size=None) as ws:
                if known and rng.random() < 0.5:
                    s = rng.choice(known)
                    await ws.send(json.dumps({"type": "hello", "session_id": s["id"], "resume_token": s["token"]}))
                else:
                    await ws.send(json.dumps({"type": "hello"}))
                frame = json.loads(await ws.recv())
                if frame["type"] != "session":
                    continue  # busy elsewhere: try another
                s = sessions.setdefault(frame["session_id"], {"id": frame["session_id"], "token": frame["resume_token"],
                                                              "acked": []})
                for t in range(rng.randint(1, 3)):
                    text = (LONG if rng.random() < 0.3 else "") + f"Question {n}.{t}: name a colour."
                    await ws.send(json.dumps({"type": "user", "content": text, "max_tokens": 12, "temperature": 0}))
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "token" and text not in s["acked"]:
                            s["acked"].append(text)  # stored before the first token was sent
                        if frame["type"] in ("done", "error"):
                            break
        except (OSError, websockets.ConnectionClosed, asyncio.TimeoutError):
            await asyncio.sleep(0.05)


def strays_removed(http_url: str) -> int:
    """Temporary files of interrupted KV writes the server removed at start-up (= kills during a spill)."""
    return admin(http_url, "/api/stats")["kv"]["files"]["num_stray_removed"]


def admin(http_url: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(http_url + path, method=method, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def spiller(http_url: str, stop: float) -> None:
    """Keeps KV writes going: asks the server to spill a session held in RAM every 0.1 s."""
    while time.monotonic() < stop:
        try:
            in_ram = (await asyncio.to_thread(admin, http_url, "/api/sessions?tier=ram&limit=100"))["sessions"]
            if in_ram:
                await asyncio.to_thread(admin, http_url, f"/api/sessions/{in_ram[0]['id']}/evict", "POST")
        except OSError:
            pass  # the server is gone
        await asyncio.sleep(0.1)


async def kill_during_a_write(server: RealServer, rng: random.Random, give_up: float) -> None:
    """SIGKILL a few milliseconds after asking for a spill of a session in RAM (so, most likely, while
    its file is being written)."""
    while time.monotonic() < give_up:
        try:
            in_ram = (await asyncio.to_thread(admin, server.url, "/api/sessions?tier=ram&limit=100"))["sessions"]
        except OSError:
            in_ram = []
        big = [s for s in in_ram if s["num_tokens"] > 300]
        if big:
            def evict(sid: str = big[0]["id"]) -> None:
                try:
                    admin(server.url, f"/api/sessions/{sid}/evict", "POST")
                except OSError:
                    pass  # killed before it answered: expected

            asyncio.get_running_loop().run_in_executor(None, evict)
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            break
        await asyncio.sleep(0.05)
    server.proc.send_signal(signal.SIGKILL)


def check(data: Path, sessions: dict, url: str, model) -> list[str]:
    problems = []
    db = sqlite3.connect(data / "chat.db")
    if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        problems.append("integrity_check failed")
    stored = {}
    for sid, content in db.execute("SELECT session_id, content FROM messages WHERE role = 'user'"):
        stored.setdefault(sid, set()).add(content)
    db.close()
    for sid, s in sessions.items():
        lost = [m for m in s["acked"] if m not in stored.get(sid, set())]
        problems += [f"{sid}: acknowledged message lost: {m[-40:]!r}" for m in lost]
    strays = [p.name for p in (data / "kv").rglob("*") if p.is_file() and p.suffix not in (".safetensors", ".json")]
    problems += [f"stray file {name}" for name in strays]
    if sessions:  # one resumed session must answer as transformers does on its transcript
        s = max(sessions.values(), key=lambda x: len(x["acked"]))
        problems += asyncio.run(_greedy_check(url, s, model))
    return problems


async def _greedy_check(url: str, s: dict, model) -> list[str]:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "session_id": s["id"], "resume_token": s["token"]}))
        frame = json.loads(await ws.recv())
        if frame["type"] != "session":
            return [f"resume failed: {frame}"]
        history = [ChatMessage(m["role"], m["content"]) for m in frame["messages"]]
        question = "Now name a fruit."
        await ws.send(json.dumps({"type": "user", "content": question, "max_tokens": 12, "temperature": 0}))
        text = ""
        while True:
            f = json.loads(await ws.recv())
            if f["type"] == "token":
                text += f["text"]
            elif f["type"] in ("done", "error"):
                break
        s["acked"].append(question)
    want = greedy_answer(model, history + [ChatMessage("user", question)], 12)
    return [] if text == want else [f"{s['id']}: greedy answer after restart {text!r} != transformers {want!r}"]


# the exact mode: answers equal transformers' bit for bit, so any difference after a crash means wrong KV
# (the defaults agree on 60/60 answers of bench/agreement.py but are not equal by construction)
EXACT = ("--kv-dtype", "float32", "--activations", "float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    add_model_cache_argument(parser)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    model = load_model(None, args.model_cache, in_place=False)  # float: transformers' generate() runs on it
    sessions: dict = {}
    failures, killed_after, mid_write = 0, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        for cycle in range(args.cycles):
            server = RealServer(data, args.model_cache, *EXACT, "--spill-on-disconnect", "--turns-per-minute", "0",
                                "--admin-token", ADMIN).start()
            mid_write += strays_removed(server.url)
            problems = check(data, sessions, server.ws_url, model) if cycle else []
            delay = rng.uniform(0.3, 4.0)
            killed_after.append(delay)

            async def run():
                stop = time.monotonic() + 60
                tasks = [asyncio.create_task(client(server.ws_url, sessions, cycle * 100 + i, stop))
                         for i in range(args.clients)]
                if cycle % 2:  # odd cycles: kill at a random moment while clients chat and KV is spilled
                    tasks.append(asyncio.create_task(spiller(server.url, stop)))
                    await asyncio.sleep(delay)
                    server.proc.send_signal(signal.SIGKILL)
                else:  # even cycles: kill right after a spill of a long conversation was asked for
                    await asyncio.sleep(delay)
                    await kill_during_a_write(server, rng, time.monotonic() + 20)
                server.proc.wait()
                await asyncio.wait(tasks, timeout=10)
                for task in tasks:
                    task.cancel()

            asyncio.run(run())
            server.proc.stdout.close()
            failures += bool(problems)
            print(f"cycle {cycle + 1}: killed after {delay:.1f} s; {len(sessions)} sessions, "
                  f"{sum(len(s['acked']) for s in sessions.values())} acknowledged messages; "
                  f"{'OK' if not problems else problems[:3]}", flush=True)
        server = RealServer(data, args.model_cache, *EXACT, "--admin-token", ADMIN).start()
        mid_write += strays_removed(server.url)
        problems = check(data, sessions, server.ws_url, model)
        server.stop()
        failures += bool(problems)
        print(f"final check: {'OK' if not problems else problems[:5]}")
    print("\n| kill -9 cycles | restarts checked | failed checks | kills during a KV write | sessions | "
          "acknowledged messages |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.cycles} | {args.cycles} | {failures} | {mid_write} | {len(sessions)} | "
          f"{sum(len(s['acked']) for s in sessions.values())} |")


if __name__ == "__main__":
    main()
