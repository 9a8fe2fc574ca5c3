"""Building a running engine: load the model, arrange its weights, warm up, size the context, and
attach a disk tier made for this engine's KV. Blocking (seconds): call it off the event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from pathlib import Path

from engine.config import EngineConfig
from engine.engine import Engine
from engine.kv import DiskTier, KVSpec
from engine.model import MATMUL_DTYPES, ChatFormat, LoadedModel, ModelRunner, kv_fingerprint, load_model


def start_engine(config: EngineConfig, model: LoadedModel | None = None, model_cache: Path | None = None,
                 disk_for: Callable[[KVSpec], DiskTier] | None = None) -> tuple[Engine, LoadedModel]:
    """A started engine for config.model (or an already loaded `model`), with the disk tier
    disk_for(spec) if given. model_cache: where converted GGUF weights go (config.model.cache_dir wins)."""
    mc = config.model
    loaded = model or load_model(mc.path, mc.cache_dir or model_cache)
    runner = ModelRunner(loaded.model, MATMUL_DTYPES[mc.dtype], kv_dtype=config.kv.torch_dtype,
                         activations=mc.activations, codes=loaded.codes, embedding_rows=loaded.embedding_rows)
    loaded.codes.clear()  # packed into the runner's own layouts now (the embedding keeps its rows' codes)
    _return_freed_memory()
    spec = KVSpec(runner.num_layers, runner.num_kv_heads, runner.head_dim, runner.kv_dtype,
                  kv_fingerprint(loaded.fingerprint, mc.dtype, mc.activations))
    engine = Engine(runner, ChatFormat(loaded.tokenizer, loaded.model.generation_config), config, spec,
                    max_context(config, runner), disk_for(spec) if disk_for is not None else None)
    engine.calibrate()
    engine.start()
    return engine, loaded


def _return_freed_memory() -> None:
    """Give the loader's freed buffers back to the system. glibc keeps freed heap memory mapped (its mmap
    threshold grows after large frees, so the unpacked codes land on the heap): Qwen2.5-0.5B's server
    held 1.9 GB after load without this, 1.1 GB with it."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only
        trim(0)


def max_context(config: EngineConfig, runner: ModelRunner) -> int:
    """Tokens per session: the configured window, capped by the model's and the store's limits, and
    halved until one session at full context fits in RAM on its own (else its turn could never start)."""
    tokens = min(config.max_context, runner.max_context, config.kv.max_tokens_per_session)
    while tokens > 1 and runner.new_kv(0).bytes_for(tokens) > config.kv.max_ram_bytes:
        tokens //= 2
    return tokens
