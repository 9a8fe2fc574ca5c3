"""Engine statistics: counters and recent-sample distributions, written and read on the engine thread
only; other threads get a snapshot of plain values through Engine.query(Engine.stats_snapshot).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.admission import Admission
    from engine.kv import KVStore
    from engine.model import ModelRunner
    from engine.scheduler import Scheduler


MS_BUCKETS = (5, 10, 25, 50, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Distribution:
    """Count, sum, cumulative bucket counts (for histograms) and the most recent `window` samples
    (for percentiles)."""

    def __init__(self, buckets: tuple[float, ...] = MS_BUCKETS, window: int = 4096):
        self.count = 0
        self.total = 0.0
        self.bounds = buckets
        self.bucket_counts = [0] * len(buckets)  # samples <= bound, not cumulative
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.bucket_counts[i] += 1
                break

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
            "sum": self.total,
        }

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """[(upper bound, samples <= bound)], ending with (inf, count)."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.bucket_counts):
            running += n
            out.append((bound, running))
        return out + [(float("inf"), self.count)]


@dataclass
class EngineStats:
    num_steps: int = 0
    turns_finished: dict[str, int] = field(default_factory=dict)  # by finish reason / error code
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_batch: Distribution = field(default_factory=lambda: Distribution(SIZE_BUCKETS))  # sequences prefilling per step
    decode_batch: Distribution = field(default_factory=lambda: Distribution(SIZE_BUCKETS))  # sequences decoding per step
    step_tokens: Distribution = field(default_factory=lambda: Distribution(SIZE_BUCKETS))  # tokens per forward pass
    step_ms: Distribution = field(default_factory=Distribution)
    queue_wait_ms: Distribution = field(default_factory=Distribution)  # submit -> first scheduled
    ttft_ms: Distribution = field(default_factory=Distribution)
    itl_ms: Distribution = field(default_factory=Distribution)  # gap between consecutive tokens of a turn

    def count_finish(self, outcome: str) -> None:
        self.turns_finished[outcome] = self.turns_finished.get(outcome, 0) + 1

    def snapshot(self, with_buckets: bool = False) -> dict:
        """Plain JSON-able values; with_buckets adds each distribution's cumulative histogram
        buckets (the last bound is float inf, which JSON cannot carry: for Prometheus only)."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, Distribution):
                out[name] = value.summary() | ({"buckets": value.cumulative_buckets()} if with_buckets else {})
            else:
                out[name] = dict(value) if isinstance(value, dict) else value
        return out


def engine_snapshot(stats: EngineStats, scheduler: Scheduler, admission: Admission, store: KVStore,
                    runner: ModelRunner, with_buckets: bool = False) -> dict:
    """Engine and KV store statistics as plain values (engine thread)."""
    cfg, disk, budget = store.config, store.disk, store.budget
    return {
        "engine": {**stats.snapshot(with_buckets), "queue_depth": len(scheduler.waiting),
                   "running": len(scheduler.running), "admitted": admission.num_admitted,
                   "refused": dict(admission.num_refused), "predicted_ttft_ms": admission.predicted_ttft_ms(1),
                   "weights": runner.weights_summary()},
        "kv": {
            "ram": {"sessions": len(store.entries), "bytes": budget.ram_bytes,
                    "shared_prefixes": budget.num_shared, "shared_bytes": budget.shared_bytes,
                    "max_bytes": cfg.max_ram_bytes, "max_sessions": cfg.max_ram_sessions},
            "disk": {"sessions": disk.num_sessions if disk else 0, "chunks": disk.num_chunks if disk else 0,
                     "bytes": disk.total_bytes if disk else 0,
                     "max_bytes": disk.max_bytes if disk else 0},
            **asdict(store.stats),
            "files": asdict(disk.stats) if disk else {},
            "shared_tier": asdict(disk.shared_stats) if disk and disk.shared_stats is not None else None,
        },
    }
