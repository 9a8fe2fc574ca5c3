"""Crash safety: kill -9 the server at random moments, many times in a row, restarting it each time.

Each cycle starts the server on the same data directory, runs a few clients (turns, disconnects that
spill KV to disk, resumes) and an operator spilling a random session every 0.1 s through the admin
API, and kills it after a random delay: during generation, a spill write or a commit. After each restart it checks: the SQLite file passes `PRAGMA integrity_check`; no temporary
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

import torch
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.chat_format import ChatFormat, ChatMessage  # noqa: E402
from engine.loader import load_model  # noqa: E402
from tests.real_server import RealServer  # noqa: E402

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
    request = urllib.request.Request(http_url + "/api/stats", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["kv"]["files"]["num_stray_removed"]


async def spiller(http_url: str, sessions: dict, stop: float) -> None:
    """Keeps KV writes going: asks the server to spill a random known session every 0.1 s."""
    rng = random.Random(len(sessions))

    def evict(sid: str) -> None:
        request = urllib.request.Request(f"{http_url}/api/sessions/{sid}/evict", method="POST",
                                         headers={"Authorization": f"Bearer {ADMIN}"})
        urllib.request.urlopen(request, timeout=10).close()

    while time.monotonic() < stop:
        if sessions:
            try:
                await asyncio.to_thread(evict, rng.choice(list(sessions)))
            except OSError:
                pass  # not stored yet, or the server is gone
        await asyncio.sleep(0.1)


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
    strays = [p.name for p in (data / "kv").glob("*") if not p.name.endswith(".safetensors")]
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
    ids = ChatFormat(model.tokenizer, model.model.generation_config).render(history + [ChatMessage("user", question)])
    with torch.inference_mode():
        out = model.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    want = model.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    return [] if text == want else [f"{s['id']}: greedy answer after restart {text!r} != transformers {want!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-cache", type=Path, default=Path(__file__).resolve().parents[1] / ".cache" / "models")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    model = load_model(None, args.model_cache)
    sessions: dict = {}
    failures, killed_after, mid_write = 0, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        for cycle in range(args.cycles):
            server = RealServer(data, args.model_cache, "--spill-on-disconnect", "--turns-per-minute", "0",
                                "--admin-token", ADMIN).start()
            mid_write += strays_removed(server.url)
            problems = check(data, sessions, server.ws_url, model) if cycle else []
            delay = rng.uniform(0.3, 4.0)
            killed_after.append(delay)

            async def run():
                stop = time.monotonic() + 60
                tasks = [asyncio.create_task(client(server.ws_url, sessions, cycle * 100 + i, stop))
                         for i in range(args.clients)]
                tasks.append(asyncio.create_task(spiller(server.url, sessions, stop)))
                await asyncio.sleep(delay)
                server.proc.send_signal(signal.SIGKILL)
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
        server = RealServer(data, args.model_cache, "--admin-token", ADMIN).start()
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
