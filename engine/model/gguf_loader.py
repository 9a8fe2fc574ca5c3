"""A GGUF file loaded in place: matrices in a block type our kernels read stay those blocks' codes
(engine/model/gguf_codes.py; never a float copy), everything else is dequantized into the model.

transformers stays the source of truth for the configuration, the tokenizer and the chat template (read
once from the file's metadata: engine/model/gguf_meta.py) and for the model's structure: the model is
built with its parameters on the meta device, and gets real tensors only for what is not kept as codes
(norms, biases, matrices of other block types). Tensor names follow the gguf package's name map; the
row order of llama's q/k projections and gemma's norm offsets follow transformers' tensor processors,
applied to block rows as to float rows. Tensors are memory-mapped while loading and released after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from gguf import GGMLQuantizationType, MODEL_ARCH_NAMES, dequantize, get_tensor_name_map
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

from engine.model.gguf_codes import BlockMatrix, MappedRows, has_kernel
from engine.model.gguf_meta import GGUFFormatError, GGUFMeta, TensorEntry, read_meta

_FLOAT_KINDS = {"F32", "F16", "BF16"}


@dataclass(frozen=True)
class GGUFModel:
    model: PreTrainedModel  # the matrices named in `codes` are on the meta device; the rest float32
    tokenizer: PreTrainedTokenizerBase
    codes: dict[str, BlockMatrix]  # by parameter name: decoded when the runner packs them
    embedding: MappedRows | None  # the embedding's rows read from the file (its parameter is then on meta)
    digest: str  # sha256 hex of the file
    meta_dir: Path  # the config and tokenizer files read from it (engine/model/gguf_meta.py)


def load_gguf(path: Path, cache_dir: Path) -> GGUFModel:
    """The model of a GGUF file, its matrices kept as block codes where a kernel reads their type.
    Blocking (a second or so; the first load of a file also reads its metadata, tens of seconds)."""
    meta = read_meta(path, cache_dir)
    with init_empty_weights():  # parameters on meta; buffers (the rotary tables) real
        model = AutoModelForCausalLM.from_config(meta.config, dtype=torch.float32, attn_implementation="sdpa")
    processor = TENSOR_PROCESSORS.get(meta.architecture, TensorProcessor)(config=meta.parsed_config)
    hf_names = _name_map(model, meta)
    matrices = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    matrices.add(_embedding_name(model))
    shapes = {n: p.shape for n, p in model.named_parameters()}
    codes: dict[str, BlockMatrix] = {}
    embed_name, embedding = _embedding_name(model), None
    for entry in meta.tensors:
        hf_name = hf_names.get(entry.name)
        if hf_name is None:
            continue
        data = entry.read(path)
        if entry.kind not in _FLOAT_KINDS and hf_name in matrices:
            processed = _processed(processor, data, entry, hf_names, meta)
            if hf_name == embed_name and processed is data and has_kernel(entry.kind):
                embedding = MappedRows(path, entry.kind, entry.offset, tuple(entry.shape))  # rows read on demand
                if not model.config.tie_word_embeddings:
                    continue  # (a tied LM head reads the whole matrix: its codes below)
            if has_kernel(entry.kind):
                kept = BlockMatrix(entry.kind, np.asarray(processed))
                _check_shape(path, entry, kept.shape, shapes[hf_name])
                codes[hf_name] = kept
                continue
        values = np.array(_processed(processor, _float(data, entry), entry, hf_names, meta), dtype=np.float32)
        _check_shape(path, entry, values.size, shapes[hf_name])
        _assign(model, hf_name, torch.from_numpy(values).reshape(shapes[hf_name]))
    _tie(model, codes)
    model.eval().requires_grad_(False)
    return GGUFModel(model, meta.tokenizer, codes, embedding, meta.digest, meta.directory)


def _check_shape(path: Path, entry: TensorEntry, got, want: torch.Size) -> None:
    """got: the tensor's [rows, columns] (codes) or number of values; want: the model's parameter shape."""
    if got != (tuple(want) if isinstance(got, tuple) else want.numel()):
        held = f"has shape {got}" if isinstance(got, tuple) else f"holds {got} values"
        raise GGUFFormatError(f"{path}: tensor {entry.name} {held} where the model's configuration expects "
                              f"{tuple(want)}")


def _name_map(model: PreTrainedModel, meta: GGUFMeta) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name."""
    arch = next(key for key, value in MODEL_ARCH_NAMES.items() if value == meta.architecture)
    names = get_tensor_name_map(arch, model.config.num_hidden_layers)
    out = {}
    for hf_name in model.state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is not None:
            out[f"{gguf_name}.{suffix}"] = hf_name
    return out


def _processed(processor: TensorProcessor, data: np.ndarray, entry: TensorEntry, hf_names: dict, meta: GGUFMeta):
    """The tensor as transformers would load it (rows reordered, offsets applied); blocks as rows."""
    return processor.process(weights=data, name=entry.name, tensor_key_mapping=hf_names,
                             parsed_parameters={"config": meta.parsed_config, "tensors": {}}).weights


def _float(data: np.ndarray, entry: TensorEntry) -> np.ndarray:
    if entry.kind in ("F32", "F16"):
        return np.asarray(data, dtype=np.float32)
    return dequantize(np.asarray(data), GGMLQuantizationType[entry.kind])


def _embedding_name(model: PreTrainedModel) -> str:
    embed = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is embed) + ".weight"


def _assign(model: PreTrainedModel, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, torch.nn.Parameter(value.contiguous(), requires_grad=False))


def _tie(model: PreTrainedModel, codes: dict[str, BlockMatrix]) -> None:
    """A tied LM head reads the embedding's codes (or its float weight)."""
    if not model.config.tie_word_embeddings:
        return
    embed_name = _embedding_name(model)
    if embed_name in codes:
        codes["lm_head.weight"] = codes[embed_name]
    else:
        model.lm_head.weight = model.get_input_embeddings().weight
