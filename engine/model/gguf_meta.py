"""What a GGUF file says besides its tensors' values, read once and kept beside the model cache: the
transformers config and tokenizer it converts to, the parsed metadata transformers' tensor processors
need, and the table of tensors (name, block type, shape, offset), so that later starts memory-map the
tensors without parsing the file's metadata again (tens of seconds for a 150k-token vocabulary).

Kept in `<cache_dir>/<file stem>-<sha256 prefix>-meta/`, written to a temporary directory and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from engine.model.fingerprint import file_digest

_TABLE = "gguf-tensors.json"
_MAGIC = b"GGUF"


class GGUFFormatError(ValueError):
    """A file that is not a whole, readable GGUF file: no GGUF header, a damaged or truncated one, tensors
    past the end of the file, a block type this reader does not know, a tensor the model does not expect."""
_FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16}


@dataclass(frozen=True)
class TensorEntry:
    name: str  # the GGUF name, e.g. blk.0.attn_q.weight
    kind: str  # GGML type name: F32, F16, BF16, Q4_0, Q8_0, Q4_K, ...
    shape: tuple[int, ...]  # as the file's data holds it: [rows, bytes per row] for block types
    offset: int  # bytes from the start of the file

    def read(self, path: Path) -> np.ndarray:
        """The tensor's data, memory-mapped (read-only): float32/float16 values, or uint8 blocks."""
        dtype = _FLOAT_DTYPES.get(self.kind, np.uint8)
        if self.kind == "BF16":
            dtype = np.uint16
        return np.memmap(path, dtype=dtype, mode="r", offset=self.offset, shape=self.shape)


@dataclass(frozen=True)
class GGUFMeta:
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    architecture: str  # general.architecture, e.g. llama, qwen2, gemma3
    parsed_config: dict  # transformers' parsed config dict (what its tensor processors take)
    tensors: list[TensorEntry]
    digest: str  # sha256 hex of the file
    directory: Path  # where its config and tokenizer files are kept


def read_meta(path: Path, cache_dir: Path) -> GGUFMeta:
    """Raises GGUFFormatError for a file that is not a whole GGUF file (then nothing is written)."""
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (it does not start with {_MAGIC!r})")
    digest = file_digest(path)
    target = cache_dir / f"{path.stem}-{digest[:16]}-meta"
    if not (target / _TABLE).is_file():
        _write_meta(path, target)
    table = json.loads((target / _TABLE).read_text())
    tensors = [TensorEntry(t["name"], t["kind"], tuple(t["shape"]), t["offset"]) for t in table["tensors"]]
    # the saved tokenizer.json, read by the generic class: the same ids and decoding as the family's class
    # (tests/engine/model/test_gguf_meta.py), which rebuilds its vocabulary and merges as Python objects
    # as well (resident after load: gemma-3 470 MB instead of 115, Qwen2.5 365 MB instead of 114)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target)
    return GGUFMeta(AutoConfig.from_pretrained(target), tokenizer, table["architecture"], table["parsed_config"],
                    tensors, digest, target)


def _tensor_table(path: Path) -> tuple[str, list[dict]]:
    """(architecture, the tensors' name, block type, shape and offset), the file checked whole."""
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # the reader's errors on a damaged file are numpy's and struct's, not its own
        raise GGUFFormatError(f"{path}: a damaged or truncated GGUF file ({type(exc).__name__}: {exc})") from exc
    size = path.stat().st_size
    tensors = []
    for t in reader.tensors:
        try:
            kind = GGMLQuantizationType(t.tensor_type).name
        except ValueError:
            raise GGUFFormatError(f"{path}: tensor {t.name} has an unknown block type {int(t.tensor_type)}") from None
        if t.data_offset + t.n_bytes > size:
            raise GGUFFormatError(f"{path}: truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}, "
                                  f"the file has {size}")
        tensors.append({"name": t.name, "kind": kind, "shape": list(t.data.shape), "offset": int(t.data_offset)})
    return architecture, tensors


def _write_meta(path: Path, target: Path) -> None:
    architecture, tensors = _tensor_table(path)  # before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".meta-", dir=target.parent))
    try:
        AutoConfig.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
        table = {"architecture": architecture, "parsed_config": parsed["config"], "tensors": tensors}
        (tmp / _TABLE).write_text(json.dumps(table, default=_plain))
        os.replace(tmp, target)  # atomic: a half-written directory is never used
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plain(value):
    """JSON for the numpy scalars and arrays the parsed config may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in the GGUF metadata cache")
