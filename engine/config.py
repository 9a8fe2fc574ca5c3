from __future__ import annotations

from dataclasses import dataclass, field

from engine.kv.store import KVStoreConfig


@dataclass(frozen=True)
class EngineConfig:
    max_context: int = 8192  # tokens per session (prompt + answer); capped by the model and the KV store
    max_new_tokens: int = 2048  # upper bound a turn may ask for
    max_batch_size: int = 32  # sequences per forward pass
    max_tokens_per_step: int = 512  # new tokens per forward pass when no turn is decoding
    # while turns decode, a step's prefill share is what keeps the step within target_step_ms (predicted
    # by engine/step_cost.py from measured steps), so their inter-token latency stays bounded ...
    target_step_ms: float = 200.0
    max_tokens_per_decode_step: int = 256  # ... and never more tokens than this in such a step
    min_prefill_tokens_per_step: int = 16  # prefill progress per step even with a full decode batch
    max_queue: int = 64  # turns admitted but not finished; beyond this, Overloaded
    max_wait_ms: float = 5.0  # an idle engine waits this long for more turns to prefill together
    reuse_kv: bool = True  # False: every turn recomputes its whole prompt (a baseline for benchmarks)
    kv: KVStoreConfig = field(default_factory=KVStoreConfig)
