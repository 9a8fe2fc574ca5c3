"""The KV spill formats (docs/KV_FORMAT.md).

A chunk file is a standard safetensors file holding one tensor "kv", shape [layers, 2, kv_heads, tokens,
head_dim], the KV of `tokens` consecutive positions (at most the store's chunk size), whose metadata names
the format version, the model fingerprint, the chunk's token ids, the name of the chunk before it and an
xxh3-128 checksum of the payload. A chunk's name is a hash chained over the model and every token up to
its end (chunk_names), so equal names mean equal KV: branches of a conversation, and conversations that
begin alike, share their chunk files. A session's manifest (a small JSON file) names its token ids; its
chunks follow from them.

Files of format "1" (one whole file per session, written by earlier versions) are still read.

Chunk files are written and read by streaming each [tokens, head_dim] slab straight between the session's
RAM tensor and the file, so a spill or restore never holds a second copy of the KV and releases the GIL
for the I/O. Reading verifies everything before the KV is used: KVFileInvalid otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import xxhash

from storage.errors import KVFileInvalid

FORMAT_VERSION = "2"
LEGACY_VERSION = "1"  # one file per session, its metadata naming the session
SUFFIX = ".safetensors"
MANIFEST_SUFFIX = ".json"
_MAX_HEADER = 16 << 20  # bytes; token ids of a 100k-token legacy file fit easily
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

Destination = Callable[[int], torch.Tensor]  # n -> [layers, 2, kv_heads, >= n, head_dim] to read n tokens into


@dataclass(frozen=True)
class KVLayout:
    """What every file of this server must match: [layers, 2, kv_heads, tokens, head_dim] of dtype."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    fingerprint: str  # the model's (weights, config, tokenizer, chat template)

    @property
    def dtype_name(self) -> str:
        return _DTYPES[self.dtype]

    def token_bytes(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * torch.tensor([], dtype=self.dtype).element_size()


def chunk_names(fingerprint: str, dtype: str, token_ids: list[int], chunk_tokens: int) -> list[str]:
    """The names of the chunks covering token_ids: chunk i holds positions [i*chunk_tokens, (i+1)*chunk_tokens),
    the last one possibly fewer. Name i = sha256(name i-1, chunk i's token ids), 40 hex digits, starting
    from a root naming the model, the KV dtype and the chunk size: KV at a position depends on every token
    before it."""
    root = f"{fingerprint}/{dtype}/{chunk_tokens}"
    names, prev = [], hashlib.sha256(root.encode()).hexdigest()[:40]
    for start in range(0, len(token_ids), chunk_tokens):
        part = token_ids[start:start + chunk_tokens]
        prev = hashlib.sha256(prev.encode() + struct.pack(f"<{len(part)}q", *part)).hexdigest()[:40]
        names.append(prev)
    return names


# ---- chunk files ----

def write_chunk(f: BinaryIO, layout: KVLayout, pieces: list[torch.Tensor], token_ids: list[int], prev: str) -> int:
    """Write one chunk file to f: pieces are consecutive [layers, 2, kv_heads, n_i, head_dim] views with
    sum(n_i) == len(token_ids), unchanged during the call; prev is the name of the chunk before ("" for
    the first). Returns the file's size in bytes."""
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
        "prev_chunk": prev,
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


def read_chunk(path: Path, layout: KVLayout, into: Destination, version: str = FORMAT_VERSION
               ) -> tuple[torch.Tensor, list[int], dict[str, str], int]:
    """Read and verify a file of `version` (a chunk, or a whole legacy file): into(num_tokens) returns the
    destination, which the payload is read straight into. Returns (that destination, token ids, metadata,
    file size); raises KVFileInvalid when the file must not be used."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise KVFileInvalid("missing") from None
    with f:
        return read_chunk_from(f, os.fstat(f.fileno()).st_size, layout, into, version)


def read_chunk_from(f: BinaryIO, size: int, layout: KVLayout, into: Destination, version: str = FORMAT_VERSION
                    ) -> tuple[torch.Tensor, list[int], dict[str, str], int]:
    """read_chunk of the `size` bytes f holds (a file, or the bytes of a shared tier's value)."""
    L = layout
    head = f.read(8)
    if len(head) < 8:
        raise KVFileInvalid("truncated", "no header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > _MAX_HEADER or 8 + header_len > size:
        raise KVFileInvalid("truncated", "header")
    try:
        header = json.loads(f.read(header_len))
        meta = header["__metadata__"]
        found_version = meta["format_version"]
        fingerprint = meta["model_fingerprint"]
        token_ids = json.loads(meta["token_ids"])
        shape = json.loads(meta["shape"])
        checksum = meta["checksum"]
        tensor = header["kv"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KVFileInvalid("corrupt", f"header: {exc}") from None
    if found_version != version:
        raise KVFileInvalid("format_version", str(found_version))
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
    data = into(n)
    digest = xxhash.xxh3_128()
    for layer in range(L.num_layers):
        for kv in range(2):
            for head_index in range(L.num_kv_heads):
                slab = _raw(data[layer, kv, head_index, :n])
                if f.readinto(slab) != slab.nbytes:
                    raise KVFileInvalid("truncated", "payload")
                digest.update(slab)
    if "xxh3_128:" + digest.hexdigest() != checksum:
        raise KVFileInvalid("corrupt", "checksum")
    return data, token_ids, meta, size


# ---- session manifests ----

def manifest_bytes(layout: KVLayout, session_key: str, token_ids: list[int], chunk_tokens: int) -> bytes:
    """A session's manifest: the exact token ids its KV covers; its chunks are chunk_names() of them
    (with the manifest's model fingerprint, dtype and chunk size)."""
    return json.dumps({"format_version": FORMAT_VERSION, "model_fingerprint": layout.fingerprint,
                       "dtype": layout.dtype_name, "session_key": session_key, "chunk_tokens": chunk_tokens,
                       "token_ids": token_ids}, separators=(",", ":")).encode()


def read_manifest(path: Path) -> dict:
    """The manifest's fields; raises OSError/ValueError/KeyError/TypeError for a file that is not one."""
    return parse_manifest(path.read_bytes())


def parse_manifest(raw: bytes) -> dict:
    """read_manifest of a manifest's bytes; raises ValueError/KeyError/TypeError."""
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or manifest["format_version"] != FORMAT_VERSION:
        raise ValueError("not a manifest of this format")
    if not isinstance(manifest["dtype"], str) or not isinstance(manifest["model_fingerprint"], str):
        raise TypeError("dtype or model_fingerprint")
    if not isinstance(manifest["chunk_tokens"], int) or manifest["chunk_tokens"] < 1:
        raise ValueError("chunk_tokens")
    if not all(isinstance(t, int) for t in manifest["token_ids"]) or not isinstance(manifest["session_key"], str):
        raise TypeError("token_ids or session_key")
    return manifest


def read_session(layout: KVLayout, manifest: dict, allocate: Destination,
                 fetch: Callable[[str], tuple[BinaryIO, int]]) -> tuple[torch.Tensor, list[int], int]:
    """Read a session's KV from its manifest (read_manifest's fields) and chunks: fetch(name) returns a
    chunk's bytes as (file object, size), or raises KVFileInvalid("missing"). Every chunk is verified
    (read_chunk_from) and must hold the manifest's tokens after the chunk the manifest names before it.
    Returns (allocate(len(token ids)) filled, token ids, bytes read). Raises KVFileInvalid; when a chunk
    is at fault, its name is the exception's `chunk`."""
    if manifest["model_fingerprint"] != layout.fingerprint:
        raise KVFileInvalid("model_mismatch")
    if manifest["dtype"] != layout.dtype_name:
        raise KVFileInvalid("layout_mismatch", manifest["dtype"])
    token_ids, C = manifest["token_ids"], manifest["chunk_tokens"]
    names = chunk_names(layout.fingerprint, layout.dtype_name, token_ids, C)
    data = allocate(len(token_ids))
    total = 0
    for i, name in enumerate(names):
        expected = token_ids[i * C:(i + 1) * C]

        def into(n: int, start: int = i * C, want: int = len(expected)) -> torch.Tensor:
            if n != want:
                raise KVFileInvalid("corrupt", "chunk length")
            return data[:, :, :, start:start + n]

        try:
            f, size = fetch(name)
            with f:
                _, ids, meta, size = read_chunk_from(f, size, layout, into)
            if ids != expected or meta.get("prev_chunk") != (names[i - 1] if i else ""):
                raise KVFileInvalid("corrupt", "chunk of other tokens")
        except KVFileInvalid as exc:
            exc.chunk = name
            raise
        total += size
    return data, token_ids, total


def slice_pieces(pieces: list[torch.Tensor], start: int, n: int) -> list[torch.Tensor]:
    """Views of positions [start, start + n) of consecutive pieces [layers, 2, kv_heads, n_i, head_dim]."""
    out, offset = [], 0
    for p in pieces:
        a, b = max(start, offset), min(start + n, offset + p.shape[3])
        if a < b:
            out.append(p[:, :, :, a - offset:b - offset])
        offset += p.shape[3]
    return out


def _raw(slab: torch.Tensor):
    """Bytes of a contiguous [tokens, head_dim] slab, as a writable numpy view (no copy; any dtype)."""
    assert slab.is_contiguous()
    return slab.view(torch.uint8).numpy()
