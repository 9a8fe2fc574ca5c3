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
    if params.top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = values.cumsum(0) - values > params.top_p
        values = values.masked_fill(drop, 0.0)
    return int(ids[torch.multinomial(values, 1, generator=generator)])
