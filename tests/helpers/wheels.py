"""Models published the way the registry publishes them -- one byte chunk per wheel, under
`<module>/data/` -- built in a test directory, for pulls without network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from engine.model import CatalogEntry, Chunk


def make_wheel(directory: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A py3-none-any wheel of package==version holding `files` (paths inside the wheel) and the dist-info
    that `pip download --no-index --find-links directory` needs to accept it."""
    module = package.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    meta = {f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
            f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    contents = {f"{module}/__init__.py": b"", **files, **meta}
    record = "".join(f"{name},,\n" for name in contents) + f"{dist_info}/RECORD,,\n"
    path = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for name, data in {**contents, f"{dist_info}/RECORD": record.encode()}.items():
            wheel.writestr(name, data)
    return path


def publish_model(directory: Path, name: str, chunks: list[bytes], version: str = "1.0.0",
                  sha256: str | None = None) -> CatalogEntry:
    """Wheels `<name>-part1` ... `<name>-partN` in directory, the i-th carrying chunks[i - 1] as
    data/part<i>.bin, and the catalog entry that describes them (sha256: to record a wrong one)."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, data in enumerate(chunks, start=1):
        package = f"{name}-part{i}"
        member = f"{package.replace('-', '_')}/data/part{i:02d}.bin"
        make_wheel(directory, package, version, {member: data})
        parts.append(Chunk(package, version, member, len(data)))
    whole = b"".join(chunks)
    return CatalogEntry(name, "llama", "a test model", tuple(parts), len(whole),
                        sha256 or hashlib.sha256(whole).hexdigest())
