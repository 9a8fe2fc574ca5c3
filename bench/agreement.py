"""Greedy answer agreement of the lower-precision modes with the float32 engine (and with transformers).

A fixed set of 60 conversations (single questions, system prompts, multi-turn histories) is rendered
with the model's chat template; each is answered greedily for --tokens tokens by ModelRunner with
float32 weights from float32 panels and float32 KV (the reference), with the weights read from their
exact Q4_1/Q8_0 grid codes (the default for this model; bit-identical by construction), with float16 KV
(the server's default), with bfloat16
linear layers (--dtype bfloat16: weights and activations in bf16, float32 sums), and, as an experiment
for a weight-only mode, with float32 activations on bf16-rounded weights. Prints how many answers are identical, the mean fraction of tokens that agree before
the first difference, a few side by side, and, as a check of the reference itself, how many float32
answers equal transformers' generate() (all 60).

With --activations, two emulated modes for integer kernels (int8 dot products, as llama.cpp computes
Q4_1 x Q8_1 and as AVX-512 VNNI would): every linear layer's input rounded per block of 32 to int8 times
a float scale (amax / 127, Q8_0's scheme), or to two int8 limbs (the second holding the remainder at
1/128 of the scale: ~15 bits); the matmul itself stays exact, so only the activation rounding differs.

With --model (a catalog name or a GGUF path: another model than the default), the model is loaded in
place as the server loads it, and the server's defaults (int16 activations, float16 KV) are compared with
its exact mode (float32 activations and KV), whose answers are in turn checked against transformers'
generate() on the float model transformers dequantizes; with --activations also the emulated int8
activations (on the exact mode's weights, with float16 KV).

Run: .venv/bin/python bench/agreement.py [--tokens 32] [--show 4] [--activations] [--model NAME_OR_PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import MODELS_DIR, add_model_cache_argument, catalog_gguf, cpu_summary  # noqa: E402
from engine.model import ChatFormat, ChatMessage, ForwardItem, ModelRunner, greedy_ids, load_model  # noqa: E402
from engine.kernels import Linear  # noqa: E402

TOPICS = ["the ocean", "mountains", "coffee", "trains", "gardening", "chess", "the moon", "bicycles", "rain",
          "libraries", "volcanoes", "bread", "music", "winter", "robots", "bees", "glaciers", "paper",
          "bridges", "owls"]
QUESTIONS = ["Write a short paragraph about {}.", "Give me three facts about {}.", "Explain {} to a child."]
SYSTEMS = ["You are a concise assistant. Answer in one sentence.", "You are a pirate. Stay in character."]


def conversations() -> list[list[ChatMessage]]:
    convs = []
    for i, topic in enumerate(TOPICS):
        convs.append([ChatMessage("user", QUESTIONS[i % 3].format(topic))])
        convs.append([ChatMessage("system", SYSTEMS[i % 2]), ChatMessage("user", QUESTIONS[(i + 1) % 3].format(topic))])
        convs.append([ChatMessage("user", f"What is your favourite thing about {topic}?"),
                      ChatMessage("assistant", f"I find {topic} fascinating because there is always more to learn."),
                      ChatMessage("user", "Can you give an example?")])
    return convs


def greedy(runner: ModelRunner, prompts: list[list[int]], tokens: int, stop: frozenset[int]) -> list[list[int]]:
    """Each prompt alone (batch 1), so that the comparison is about the weights' dtype only."""
    answers = []
    for prompt in prompts:
        kv = runner.new_kv()
        logits = runner.forward([ForwardItem(kv, prompt, True)])
        out: list[int] = []
        while len(out) < tokens:
            token = int(logits[0].argmax())
            if token in stop:
                break
            out.append(token)
            logits = runner.forward([ForwardItem(kv, [token], True)])
        answers.append(out)
    return answers


def _weights_rounded_to_bf16(model):
    """A copy whose matmul weights (decoder layers and LM head) hold bfloat16-representable values: what
    a weight-only bf16 kernel with float32 activations would compute."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.copy_(param.bfloat16().float())
        if rounded.lm_head.weight is rounded.model.embed_tokens.weight:  # tied: the embedding stays exact
            rounded.lm_head.weight = torch.nn.Parameter(rounded.lm_head.weight.bfloat16().float(), requires_grad=False)
    return rounded


def rounded_activations(x: torch.Tensor, limbs: int) -> torch.Tensor:
    """x [T, K] rounded per block of 32 inputs to `limbs` int8 digits of scale amax / 127 (then / 128)."""
    blocks = x.reshape(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale == 0, 1.0, scale)
    out = torch.zeros_like(blocks)
    for _ in range(limbs):
        out = out + ((blocks - out) / scale).round().clamp(-127, 127) * scale
        scale = scale / 128
    return out.reshape(x.shape)


@contextlib.contextmanager
def activations_rounded(limbs: int):
    """Every Linear's input passes rounded_activations first (the one-call layers path is bypassed)."""
    exact = Linear.__call__
    Linear.__call__ = lambda self, x: exact(self, rounded_activations(x, limbs))
    try:
        yield
    finally:
        Linear.__call__ = exact


def greedy_rounded(runner: ModelRunner, limbs: int, *args) -> list[list[int]]:
    runner._fused = None  # layers.c would not call Linear.__call__
    with activations_rounded(limbs):
        return greedy(runner, *args)


def agreeing_prefix(a: list[int], b: list[int]) -> float:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n / max(len(a), len(b), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--show", type=int, default=4, help="differing answers to print side by side")
    parser.add_argument("--activations", action="store_true", help="also the emulated int8 activation modes")
    parser.add_argument("--model", help="a catalog name or GGUF path: the server's defaults against its exact mode")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="where catalog models are (a name not there is pulled)")
    add_model_cache_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model is not None:
        args.model = str(catalog_gguf(args.model, args.models_dir))
    loaded = load_model(args.model, args.model_cache, in_place=False)  # float: the references run on it too
    fmt = ChatFormat(loaded.tokenizer, loaded.model.generation_config)
    convs = conversations()
    prompts = [fmt.render(c) for c in convs]
    if args.model is not None:
        ref, modes = _in_place_modes(args, prompts, fmt.stop_token_ids)
        return _report(args, loaded, convs, prompts, ref, modes)
    ref = greedy(ModelRunner(loaded.model, torch.float32, grid_codes=False), prompts, args.tokens, fmt.stop_token_ids)
    modes = {
        "grid codes (default weights), float32 KV vs float32 panels": greedy(
            ModelRunner(loaded.model, torch.float32), prompts, args.tokens, fmt.stop_token_ids),
        "grid codes + float16 KV vs float32": greedy(
            ModelRunner(loaded.model, torch.float32, kv_dtype=torch.float16), prompts, args.tokens, fmt.stop_token_ids),
        "int16 activations on the grid codes (--activations int16) + float16 KV vs float32": greedy(
            ModelRunner(loaded.model, torch.float32, kv_dtype=torch.float16, activations="int16"), prompts, args.tokens,
            fmt.stop_token_ids),
        "bfloat16 linear layers (--dtype bfloat16) vs float32": greedy(ModelRunner(loaded.model, torch.bfloat16),
                                                                       prompts, args.tokens, fmt.stop_token_ids),
        "bfloat16-rounded weights, float32 activations (experiment) vs float32": greedy(
            ModelRunner(_weights_rounded_to_bf16(loaded.model), torch.float32), prompts, args.tokens,
            fmt.stop_token_ids),
    }
    if args.activations:
        for limbs, name in ((1, "int8 activations per 32 (llama.cpp's Q8 scheme, emulated) vs float32"),
                            (2, "two int8 limbs per 32 (~15-bit activations, emulated) vs float32")):
            modes[name] = greedy_rounded(ModelRunner(loaded.model, torch.float32, kv_dtype=torch.float16), limbs,
                                         prompts, args.tokens, fmt.stop_token_ids)
    _report(args, loaded, convs, prompts, ref, modes)


def _in_place_modes(args, prompts, stop) -> tuple[list[list[int]], dict]:
    """The model loaded in place as the server loads it: (its exact mode's answers, {defaults: answers})."""
    def runner(activations: str, kv_dtype: torch.dtype) -> ModelRunner:
        model = load_model(args.model, args.model_cache)  # (a runner takes its model's codes: one load each)
        return ModelRunner(model.model, torch.float32, kv_dtype=kv_dtype, activations=activations,
                           codes=model.codes, embedding_rows=model.embedding_rows)

    ref = greedy(runner("float32", torch.float32), prompts, args.tokens, stop)
    modes = {"the server's defaults (int16 activations, float16 KV) vs its exact mode":
             greedy(runner("int16", torch.float16), prompts, args.tokens, stop)}
    if args.activations:
        modes["int8 activations per 32 (llama.cpp's Q8 scheme, emulated), float16 KV vs the exact mode"] = \
            greedy_rounded(runner("float32", torch.float16), 1, prompts, args.tokens, stop)
    return ref, modes


def _report(args, loaded, convs, prompts, ref, modes) -> None:
    hf = [greedy_ids(loaded, p, args.tokens) for p in prompts]
    hf_same = sum(h[:len(r)] == r for h, r in zip(hf, ref))

    print(f"\nmachine: {cpu_summary()}; model {loaded.name}; {len(convs)} conversations, greedy, {args.tokens} tokens\n")
    print("| mode | identical answers | mean agreeing prefix |")
    print("|---|---:|---:|")
    for name, low in modes.items():
        same = sum(a == b for a, b in zip(ref, low))
        prefix = sum(agreeing_prefix(a, b) for a, b in zip(ref, low)) / len(ref)
        print(f"| {name} | {same}/{len(convs)} ({100 * same / len(convs):.0f}%) | {100 * prefix:.1f}% |")
    print(f"\nthe reference (float32 engine) vs transformers generate() (float32, MKL): {hf_same}/{len(hf)} identical\n")
    for name, low in modes.items():
        shown = 0
        for conv, a, b in zip(convs, ref, low):
            if a != b and shown < args.show:
                shown += 1
                print(f"- [{name}] {conv[-1].content!r}\n  float32: {loaded.tokenizer.decode(a)!r}\n"
                      f"  other  : {loaded.tokenizer.decode(b)!r}")


if __name__ == "__main__":
    main()
