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
from engine.step_cost import StepCostModel
from engine.turn import Turn


class Scheduler:
    def __init__(self, config: EngineConfig, cost: StepCostModel | None = None):
        self.config = config
        self.cost = cost or StepCostModel()
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

    def schedule(self, start: Callable[[Turn], bool]) -> list[tuple[Turn, list[int]]]:
        """Plan one step. `start(turn)` attaches a waiting turn's KV; False means not ready yet (its
        KV is being restored, or RAM is being freed): the turn keeps its place and others go ahead."""
        decoding = [t for t in self.running if not t.num_prompt_remaining]
        prefilling = [t for t in self.running if t.num_prompt_remaining]
        # while anyone streams, a step must stay short: its prefill share is what fits in the step-time
        # target, so that the inter-token latency of decoding turns stays bounded
        cfg = self.config
        if decoding:
            fits = self.cost.prefill_budget(len(decoding), cfg.target_step_ms)
            budget = min(fits, cfg.max_tokens_per_decode_step - len(decoding))
        else:
            budget = cfg.max_tokens_per_step
        plan: list[tuple[Turn, list[int]]] = [(turn, turn.next_input(1)) for turn in decoding]
        budget = max(budget, cfg.min_prefill_tokens_per_step)  # prefills always progress
        for turn in prefilling:
            if budget <= 0:
                break
            tokens = turn.next_input(budget)
            plan.append((turn, tokens))
            budget -= len(tokens)
        for turn in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_batch_size:
                break
            if not start(turn):
                continue
            self.waiting.remove(turn)
            self.running.append(turn)
            tokens = turn.next_input(budget)
            plan.append((turn, tokens))
            budget -= len(tokens)
        return plan
