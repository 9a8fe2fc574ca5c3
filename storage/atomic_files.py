"""Files written whole or not at all: into a temporary beside the final name, synced, renamed over it. A
crash leaves at worst a temporary (named `<name>.<pid>.<thread>.tmp`), which the owner removes at start-up."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def write_atomically(path: Path, write: Callable[[BinaryIO], int], sync: bool = True) -> int:
    """Write a file by write(f) (which returns the bytes it wrote), fsync it (if sync), rename it over path.
    Returns its size. The folder is not synced: fsync_dir once after a batch."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            size = write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
