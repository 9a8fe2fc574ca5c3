"""Build and load the engine's C kernels (engine/kernels/csrc/*.c) with the system C compiler, through ctypes.

Plain C (no torch headers), so a build takes about a second; the shared library is cached under
`cache_dir` keyed by the sources, the compiler, the flags and the CPU (it is built for this CPU).
The kernels run on their own small thread pool (engine/kernels/csrc/pool.c), started once with one thread
per core available to the process, the calling (engine) thread included.

Anything going wrong (no compiler, failed build) returns None: callers fall back to torch operations.
The functions of the library are bound (with their ctypes signatures) by engine/kernels/bindings.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_SOURCES = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-pthread", "-fPIC", "-shared",
          # let gcc vectorise the dot-product reductions; keep infinities and NaN semantics
          "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]


def _flags() -> list[str]:
    """_FLAGS, plus -DCHATSERVER_VL=N when CHATSERVER_KERNEL_LANES=N (4, 8 or 16) forces the kernels' vector
    width: a test knob, which runs the 16-lane code paths (split into pairs of registers, slowly) on an
    AVX2 machine, or the 4-lane ones anywhere."""
    lanes = os.environ.get("CHATSERVER_KERNEL_LANES")
    if not lanes:
        return _FLAGS
    if lanes not in ("4", "8", "16"):
        raise ValueError(f"CHATSERVER_KERNEL_LANES must be 4, 8 or 16, not {lanes!r}")
    return [*_FLAGS, f"-DCHATSERVER_VL={lanes}"]


def default_cache_dir() -> Path:
    """Where built libraries are kept: $XDG_CACHE_HOME/chatserver/native (default ~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chatserver" / "native"


_library: ctypes.CDLL | None = None
_tried = False


def kernels() -> ctypes.CDLL | None:
    """The engine's kernel library (built on first use, its thread pool started with threads()), or None."""
    global _library, _tried
    if not _tried:
        _tried = True
        _library = load_library("kernels")
        if _library is not None:
            _library.pool_start(ctypes.c_int(threads()))  # int pool_start(int threads), kernels.h
    return _library


def threads() -> int:
    """Kernel threads: CHATSERVER_THREADS, else the cores this process may run on."""
    configured = os.environ.get("CHATSERVER_THREADS")
    return max(1, int(configured)) if configured else len(os.sched_getaffinity(0))


def load_library(name: str, cache_dir: Path | None = None) -> ctypes.CDLL | None:
    """Compile all of engine/kernels/csrc/*.c into lib<name> (once per sources/compiler/CPU) and load it;
    None if impossible."""
    sources = sorted(_SOURCES.glob("*.c"))
    text = "".join(p.read_text() for p in sorted(_SOURCES.iterdir()) if p.suffix in (".c", ".h"))
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        log.warning("no C compiler found: %s kernels disabled (slower torch fallback)", name)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
        flags = _flags()
        key = hashlib.sha256("\0".join([text, version, " ".join(flags), _cpu_id()]).encode())
        target = (cache_dir or default_cache_dir()) / f"{name}-{key.hexdigest()[:16]}.so"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                subprocess.run([compiler, *flags, "-o", tmp, *map(str, sources), "-lm"],
                               capture_output=True, text=True, check=True)
                os.replace(tmp, target)  # atomic: concurrent builders never load a half-written file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building %s kernels failed (slower torch fallback): %s", name, detail)
        return None


def _cpu_id() -> str:
    """What -march=native depends on: machine and CPU feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return platform.machine() + flags
