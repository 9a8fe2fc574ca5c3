"""A stateless OpenAI-API client replaying 8-turn conversations: TTFT and cached tokens per turn, with
KV reuse on and off, in one run.

The client resends the whole conversation every turn (as OpenAI clients do), through the official
`openai` package, streaming. It starts the server twice, one after the other: normally (the server
finds the KV the previous request of the conversation left, docs/OPENAI.md) and with --no-kv-reuse
(every request recomputes its prompt). Per turn it prints the prompt length, the cached tokens the
server reported (`usage.prompt_tokens_details.cached_tokens`), the median time to first token
(client-side, request sent -> first content chunk) of both, and their ratio.

Run: .venv/bin/python bench/openai_replay.py [--conversations 3] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_model_cache_argument, cpu_summary  # noqa: E402
from tests.helpers.real_server import RealServer  # noqa: E402

SYSTEM = "You are a patient cooking teacher. Explain things step by step, with practical tips."
TURNS = ["I want to learn to bake bread at home. Where do I start?", "What flour should I buy?",
         "How long should I knead the dough?", "My dough does not rise. Why?", "How do I know when it is baked?",
         "Can I freeze the bread?", "How do I make a sourdough starter?", "Summarize the whole process for me."]


def replay(url: str, conversation: int, max_tokens: int) -> list[dict]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    messages = [{"role": "system", "content": f"{SYSTEM} (Student number {conversation}.)"}]
    rows = []
    for question in TURNS:
        messages.append({"role": "user", "content": question})
        sent = time.perf_counter()
        ttft, text, usage = None, [], None
        for chunk in client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                    max_tokens=max_tokens, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or (time.perf_counter() - sent) * 1000
                text.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        messages.append({"role": "assistant", "content": "".join(text)})
        rows.append({"ttft": ttft, "prompt": usage.prompt_tokens, "cached": usage.prompt_tokens_details.cached_tokens,
                     "text": "".join(text)})
    return rows


def run_server(model_cache: Path, args: list[str], conversations: int, max_tokens: int) -> list[list[dict]]:
    with tempfile.TemporaryDirectory() as data:
        server = RealServer(Path(data), model_cache, *args).start()
        try:
            replay(server.url, 999, 4)  # warm-up
            return [replay(server.url, c, max_tokens) for c in range(conversations)]
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    add_model_cache_argument(parser)
    args = parser.parse_args()
    reuse = run_server(args.model_cache, [], args.conversations, args.max_tokens)
    recompute = run_server(args.model_cache, ["--no-kv-reuse"], args.conversations, args.max_tokens)

    print(f"\nmachine: {cpu_summary()}")
    print(f"{args.conversations} conversations x {len(TURNS)} turns, greedy, max_tokens {args.max_tokens}; "
          "medians over conversations\n")
    print("| turn | prompt tokens | cached tokens (reuse) | TTFT reuse ms | TTFT recompute ms | recompute / reuse |")
    print("|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for t in range(len(TURNS)):
        on = statistics.median(c[t]["ttft"] for c in reuse)
        off = statistics.median(c[t]["ttft"] for c in recompute)
        ratios.append(off / on)
        print(f"| {t + 1} | {statistics.median(c[t]['prompt'] for c in reuse):.0f} | "
              f"{statistics.median(c[t]['cached'] for c in reuse):.0f} | {on:.0f} | {off:.0f} | {off / on:.1f}x |")
    same = sum(a["text"] == b["text"] for ca, cb in zip(reuse, recompute) for a, b in zip(ca, cb))
    print(f"\nmedian ratio over turns 2-{len(TURNS)}: {statistics.median(ratios[1:]):.1f}x; "
          f"identical answers with and without reuse: {same}/{len(TURNS) * args.conversations}")


if __name__ == "__main__":
    main()
