"""Engine statistics: counters and recent-sample distributions, written by the engine thread only.

Readers on other threads take `snapshot()`, which copies under the GIL; values may be a step
old, never torn in a way that matters for monitoring.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class Distribution:
    """Count, sum and the most recent `window` samples (for percentiles)."""

    def __init__(self, window: int = 4096):
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)

    def percentile(self, q: float) -> float:
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict:
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else 0.0,
            "p50": self.percentile(50),
            "p90": self.percentile(90),
            "p99": self.percentile(99),
            "max": max(self.recent) if self.recent else 0.0,
        }


@dataclass
class EngineStats:
    num_steps: int = 0
    turns_finished: dict[str, int] = field(default_factory=dict)  # by finish reason / error code
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_batch: Distribution = field(default_factory=Distribution)  # sequences prefilling per step
    decode_batch: Distribution = field(default_factory=Distribution)  # sequences decoding per step
    step_tokens: Distribution = field(default_factory=Distribution)  # tokens per forward pass
    step_ms: Distribution = field(default_factory=Distribution)
    queue_wait_ms: Distribution = field(default_factory=Distribution)  # submit -> first scheduled
    ttft_ms: Distribution = field(default_factory=Distribution)
    itl_ms: Distribution = field(default_factory=Distribution)  # gap between consecutive tokens of a turn

    def count_finish(self, outcome: str) -> None:
        self.turns_finished[outcome] = self.turns_finished.get(outcome, 0) + 1

    def snapshot(self) -> dict:
        out = {}
        for name, value in vars(self).items():
            out[name] = value.summary() if isinstance(value, Distribution) else (dict(value) if isinstance(value, dict) else value)
        return out
