"""Fingerprints: the identity of everything that decides KV contents. A KV file is reused only by a server
whose fingerprint is the same (same weights, config, tokenizer, chat template, and numeric modes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase

_FINGERPRINT_FILE = "chatserver-fingerprint.txt"


def file_digest(path: Path) -> str:
    """sha256 hex of a file's bytes."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_fingerprint(directory: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of everything that decides KV contents: weights, config, tokenizer, chat template.

    Cached next to the weights, keyed by their sizes and mtimes, so that restarts do not rehash.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != _FINGERPRINT_FILE)
    stamp = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    cached = directory / _FINGERPRINT_FILE
    try:
        saved_stamp, saved = cached.read_text().split("\n", 1)
        if saved_stamp == stamp:
            return saved.strip()
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_digest(p).encode())
    h.update(str(tokenizer.chat_template).encode())
    fingerprint = h.hexdigest()
    try:
        cached.write_text(f"{stamp}\n{fingerprint}\n")
    except OSError:
        pass  # read-only model directory: recompute next time
    return fingerprint


def kv_fingerprint(model_fingerprint: str, dtype: str, activations: str) -> str:
    """KV computed with bf16 matmuls or int16 activations differs from float32 KV: a spill file is only
    reused by the same mode. (The exact mode keeps the model's own fingerprint.)"""
    mode = dtype if activations == "float32" else f"{dtype}:{activations}"
    if mode == "float32":
        return model_fingerprint
    return hashlib.sha256(f"{model_fingerprint}:{mode}".encode()).hexdigest()
