"""A burst a small team's users could produce, against the real server on its default limits: N
concurrent short chat completions (the OpenAI API), and M WebSocket connections from one address
(as behind a proxy or an office NAT).

Prints, per burst size: answered / refused (429) counts, Retry-After seen, the time to the last answer,
and client-side TTFT percentiles (request sent -> first streamed content).

Run: .venv/bin/python bench/burst.py [--requests 100 400] [--max-tokens 8] [--connections 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary, percentile  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402


async def one_request(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int, i: int) -> dict:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": i, "stream": True,
            "messages": [{"role": "user", "content": f"Say something short about number {i}."}]}
    sent = time.perf_counter()
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if response.status != 200:
            await response.read()
            return {"status": response.status, "retry_after": response.headers.get("Retry-After")}
        ttft = None
        async for line in response.content:
            if ttft is None and b'"content":' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - sent
        return {"status": 200, "ttft": ttft, "done": time.perf_counter() - sent}


async def request_burst(url: str, n: int, max_tokens: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        model = (await (await session.get(url + "/v1/models")).json())["data"][0]["id"]
        started = time.perf_counter()
        results = await asyncio.gather(*[one_request(session, url, model, max_tokens, i) for i in range(n)])
        wall = time.perf_counter() - started
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    retry = sorted({r["retry_after"] for r in refused})
    print(f"| {n} | {len(ok)} | {len(refused)} | {', '.join(map(str, retry)) or '-'} | {wall:.1f} s | "
          f"{percentile(ttfts, 50):.2f} s | {percentile(ttfts, 90):.2f} s | {percentile(ttfts, 100):.2f} s |")


async def connection_burst(url: str, n: int) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        opened, refused = [], 0
        for _ in range(n):
            try:
                opened.append(await session.ws_connect(ws_url))
            except aiohttp.WSServerHandshakeError:
                refused += 1
        for ws in opened:
            await ws.close()
    print(f"\n{n} WebSocket connections from one address: {len(opened)} opened, {refused} refused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--connections", type=int, default=300)
    add_model_cache_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), args.model_cache).start()  # the default limits
        try:
            print(f"machine: {cpu_summary()}\n")
            print("| concurrent requests | answered | refused (429) | Retry-After | last answer | TTFT p50 | p90 | max |")
            print("|---:|---:|---:|---|---:|---:|---:|---:|")
            for n in args.requests:
                asyncio.run(request_burst(server.url, n, args.max_tokens))
            asyncio.run(connection_burst(server.url, args.connections))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
