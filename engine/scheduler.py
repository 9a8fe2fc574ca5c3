"""Which turns run in the next forward pass, and with how many tokens each.

Plain Python, no model: decoding turns each get one token, then prefilling turns share what is
left of the per-step token budget (chunked prefill), then waiting turns are started while the
batch has room. Long prompts therefore never stall the streams that are already decoding for
more than one chunk.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from engine.config import EngineConfig
from engine.turn import Turn


class Scheduler:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.waiting: deque[Turn] = deque()
        self.running: list[Turn] = []

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, turn: Turn) -> None:
        self.waiting.append(turn)

    def remove(self, turn: Turn) -> None:
        if turn in self.running:
            self.running.remove(turn)
        else:
            self.waiting.remove(turn)

    def schedule(self, start: Callable[[Turn], None]) -> list[tuple[Turn, list[int]]]:
        """Plan one step. `start(turn)` is called for each waiting turn admitted (attaches its KV)."""
        budget = self.config.max_tokens_per_step
        plan: list[tuple[Turn, list[int]]] = []
        decoding = [t for t in self.running if not t.num_prompt_remaining]
        prefilling = [t for t in self.running if t.num_prompt_remaining]
        for turn in decoding:
            plan.append((turn, turn.next_input(1)))
            budget -= 1
        for turn in prefilling:
            if budget <= 0:
                break
            tokens = turn.next_input(budget)
            plan.append((turn, tokens))
            budget -= len(tokens)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_batch_size:
            turn = self.waiting.popleft()
            start(turn)
            self.running.append(turn)
            tokens = turn.next_input(budget)
            plan.append((turn, tokens))
            budget -= len(tokens)
        return plan
