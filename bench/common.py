"""What the benchmark programs share: the model files they need, percentiles, the machine they ran on.

Every program takes --model-cache (default: .cache/models in the repository, the directory the tests
use too). A program that reads the model's files itself, before or without a server, calls
prepare_model(): on an empty cache it converts the default GGUF to safetensors through the engine's
own loader (~30 s, once), exactly as `python -m chatserver serve` does on its first start. Programs
that only start servers need nothing prepared: the server converts on its first start.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "MODELS_DIR",
    "MODEL_CACHE",
    "ROOT",
    "add_model_cache_argument",
    "catalog_gguf",
    "cpu_summary",
    "percentile",
    "prepare_model",
    "prepared_tokenizer",
]

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / ".cache" / "models"
MODELS_DIR = ROOT / ".data" / "models"  # catalog models (the server's default data directory's)


def add_model_cache_argument(parser: argparse.ArgumentParser) -> None:
    """--model-cache DIR (a Path in args.model_cache), with the shared default."""
    parser.add_argument("--model-cache", type=Path, default=MODEL_CACHE,
                        help="converted weights, shared with the servers the benchmark starts (default: "
                             ".cache/models in the repository; an empty directory is filled on first use, ~30 s)")


def prepare_model(cache_dir: Path) -> Path:
    """The directory the server loads the default model from (config.json, safetensors weights,
    tokenizer.json), converting the GGUF into `cache_dir` first if it is not there yet.

    Blocking: ~30 s on an empty cache, ~1 s after; imports torch and transformers."""
    from engine.model import load_model

    return load_model(None, cache_dir, in_place=False).path


def prepared_tokenizer(cache_dir: Path) -> Tokenizer:
    """The default model's tokenizer (the `tokenizers` library's), preparing `cache_dir` as prepare_model does."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(prepare_model(cache_dir) / "tokenizer.json"))


def catalog_gguf(value: str | None, models_dir: Path = MODELS_DIR) -> Path:
    """The GGUF file of --model: a path, or a catalog name, pulled into models_dir unless present (a
    download of hundreds of MB on a fresh machine); None: the default model."""
    from engine.model import is_catalog_name, pull, resolve_model

    if is_catalog_name(value):
        pull(value, models_dir)
    return resolve_model(value, models_dir).resolve()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (q in 0..100) by rank, no interpolation; nan for an empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def cpu_summary() -> str:
    """The CPU as /proc/cpuinfo names it, the CPU count and the vector units the kernels can use,
    e.g. "AMD EPYC, 2 CPUs, AVX-512 (VNNI, BF16)": the machine kind a figure belongs to."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("amx_tile", "AMX"))
              if flag in flags]
    return f"{model}, {os.cpu_count()} CPUs, {isa}" + (f" ({', '.join(extras)})" if extras else "")
