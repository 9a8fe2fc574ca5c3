"""Per-turn sampling: each turn owns its parameters and its random generator, so a seeded turn
draws the same tokens whatever else shares its batch."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95  # (0, 1]
    top_k: int = 0  # 0 = off
    seed: int | None = None
    max_tokens: int = 512  # new tokens, >= 1

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def new_generator(self) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return gen


_CANDIDATES = (256, 4096)  # top-p looks at this many most likely tokens first; a full sort only if they fall short


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """logits: float32 [rows, vocab], one row per turn -> one token id per row.

    The vocabulary-wide work (softmax, top-256) runs once for all sampled rows; each row gets
    exactly what sample() gives it alone (row-wise kernels; the draw uses the row's own generator),
    so a seeded turn's tokens do not depend on what else is sampled in the same step."""
    out = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.is_greedy]
    if greedy:
        for i, token in zip(greedy, logits[greedy].argmax(-1).tolist()):
            out[i] = token
    fast = [i for i, p in enumerate(params) if not p.is_greedy and p.top_k == 0 and p.top_p < 1.0]
    if fast:
        temperature = torch.tensor([params[i].temperature for i in fast], dtype=logits.dtype)[:, None]
        probs = torch.softmax(logits[fast] / temperature, dim=-1)
        values, ids = torch.topk(probs, min(_CANDIDATES[0], probs.shape[-1]))  # descending
        for row, i in enumerate(fast):
            top_p = params[i].top_p
            if values[row].sum() >= top_p:  # the nucleus lies within the candidates
                out[i] = _draw(values[row], ids[row], top_p, generators[i])
            else:
                out[i] = sample(logits[i], params[i], generators[i])
    for i, p in enumerate(params):
        if not p.is_greedy and (p.top_k != 0 or p.top_p >= 1.0):
            out[i] = sample(logits[i], p, generators[i])
    return out


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """logits: float32 [vocab] -> one token id. Temperature, then top-k, then top-p (nucleus) over
    what top-k kept, then a draw from the turn's own generator.

    Sorting the whole vocabulary per row costs milliseconds; the nucleus almost always lies within
    the few hundred most likely tokens, so only those are sorted (exactly the same result)."""
    if params.is_greedy:
        return int(logits.argmax())
    logits = logits / params.temperature
    k = params.top_k if 0 < params.top_k < logits.numel() else logits.numel()
    probs = torch.softmax(logits, dim=-1)
    for limit in (*_CANDIDATES, k):
        values, ids = torch.topk(probs, min(k, limit))  # descending
        if limit >= k or (params.top_p < 1.0 and values.sum() >= params.top_p):
            break  # the nucleus lies within these candidates (or they are all top-k keeps)
    if k < logits.numel():
        values = values / values.sum()  # top-k renormalizes before top-p
    return _draw(values, ids, params.top_p, generator)


def _draw(values: torch.Tensor, ids: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """values: probabilities of candidates `ids`, descending; keep the smallest prefix whose mass
    reaches top_p (always at least the top token) and draw from it."""
    if top_p < 1.0:
        drop = values.cumsum(0) - values > top_p
        values = values.masked_fill(drop, 0.0)
    return int(ids[torch.multinomial(values, 1, generator=generator)])
