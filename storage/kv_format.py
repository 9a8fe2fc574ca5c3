"""The KV spill file format (docs/KV_FORMAT.md): a standard safetensors file holding one tensor "kv",
shape [layers, 2, kv_heads, tokens, head_dim], whose metadata names the format version, the model
fingerprint, the token ids the KV covers, the session and an xxh3-128 checksum of the payload.

Files are written and read by streaming each [tokens, head_dim] slab straight between the session's
RAM tensor and the file, so a spill or restore never holds a second copy of the KV and releases the
GIL for the I/O. Reading verifies everything before the KV is used: KVFileInvalid otherwise.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import xxhash

from storage.errors import KVFileInvalid

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
_MAX_HEADER = 16 << 20  # bytes; token ids of a 100k-token session fit easily
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass(frozen=True)
class KVLayout:
    """What every file of this server must match: [layers, 2, kv_heads, tokens, head_dim] of dtype."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    fingerprint: str  # the model's (weights, config, tokenizer, chat template)

    def token_bytes(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()


def write_kv(f: BinaryIO, layout: KVLayout, session_id: str, pieces: list[torch.Tensor], token_ids: list[int]) -> int:
    """Write one file to f: pieces are consecutive [layers, 2, kv_heads, n_i, head_dim] views with
    sum(n_i) == len(token_ids), unchanged during the call. Returns the file's size in bytes."""
    n, L = len(token_ids), layout
    assert sum(p.shape[3] for p in pieces) == n
    for p in pieces:
        assert p.shape[:3] == (L.num_layers, 2, L.num_kv_heads) and p.shape[4] == L.head_dim and p.dtype == L.dtype
    slabs = [p[layer, kv, head] for layer in range(L.num_layers) for kv in range(2)
             for head in range(L.num_kv_heads) for p in pieces if p.shape[3]]
    checksum = xxhash.xxh3_128()
    for slab in slabs:
        checksum.update(_raw(slab))
    payload = n * L.token_bytes()
    shape = [L.num_layers, 2, L.num_kv_heads, n, L.head_dim]
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_fingerprint": L.fingerprint,
        "dtype": _DTYPES[L.dtype],
        "shape": json.dumps(shape),
        "token_ids": json.dumps(token_ids),
        "session_key": session_id,  # the format's name for the session id
        "checksum": "xxh3_128:" + checksum.hexdigest(),
    }
    header = {"__metadata__": metadata, "kv": {"dtype": _DTYPES[L.dtype], "shape": shape, "data_offsets": [0, payload]}}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the spec pads the header to 8-byte alignment
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for slab in slabs:
        f.write(_raw(slab))
    return 8 + len(header_bytes) + payload


def read_metadata(path: Path) -> dict[str, str]:
    """The header's metadata alone (no payload read, nothing verified); raises OSError/ValueError/KeyError."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_HEADER:
            raise ValueError("header too large")
        return json.loads(f.read(header_len))["__metadata__"]


def read_kv(path: Path, layout: KVLayout, allocate) -> tuple[torch.Tensor, list[int], int]:
    """Read and verify a file: allocate(num_tokens) returns the destination [layers, 2, kv_heads,
    capacity >= num_tokens, head_dim], which the payload is read straight into. Returns (data, token ids,
    file size); raises KVFileInvalid when the file must not be used."""
    L = layout
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise KVFileInvalid("missing") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise KVFileInvalid("truncated", "no header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > _MAX_HEADER or 8 + header_len > size:
            raise KVFileInvalid("truncated", "header")
        try:
            header = json.loads(f.read(header_len))
            meta = header["__metadata__"]
            version = meta["format_version"]
            fingerprint = meta["model_fingerprint"]
            token_ids = json.loads(meta["token_ids"])
            shape = json.loads(meta["shape"])
            checksum = meta["checksum"]
            tensor = header["kv"]
        except (ValueError, KeyError, TypeError) as exc:
            raise KVFileInvalid("corrupt", f"header: {exc}") from None
        if version != FORMAT_VERSION:
            raise KVFileInvalid("format_version", str(version))
        if fingerprint != L.fingerprint:
            raise KVFileInvalid("model_mismatch")
        n = len(token_ids)
        expected = [L.num_layers, 2, L.num_kv_heads, n, L.head_dim]
        if shape != expected or tensor.get("shape") != expected or tensor.get("dtype") != _DTYPES[L.dtype]:
            raise KVFileInvalid("layout_mismatch", f"{tensor.get('dtype')} {tensor.get('shape')}")
        payload = n * L.token_bytes()
        if tensor.get("data_offsets") != [0, payload] or not all(isinstance(t, int) for t in token_ids):
            raise KVFileInvalid("corrupt", "offsets")
        if size != 8 + header_len + payload:
            raise KVFileInvalid("truncated", f"{size} bytes, expected {8 + header_len + payload}")
        data = allocate(n)
        digest = xxhash.xxh3_128()
        for layer in range(L.num_layers):
            for kv in range(2):
                for head in range(L.num_kv_heads):
                    slab = _raw(data[layer, kv, head, :n])
                    if f.readinto(slab) != slab.nbytes:
                        raise KVFileInvalid("truncated", "payload")
                    digest.update(slab)
        if "xxh3_128:" + digest.hexdigest() != checksum:
            raise KVFileInvalid("corrupt", "checksum")
    return data, token_ids, size


def _raw(slab: torch.Tensor):
    """Bytes of a contiguous [tokens, head_dim] slab, as a writable numpy view (no copy; any dtype)."""
    assert slab.is_contiguous()
    return slab.view(torch.uint8).numpy()
