"""What the disk tier of session KV holds (storage/kv_files.py): its sessions, least recently used first,
the chunks each names, how many holders each chunk has, and the bytes of it all; and where each file is.

    <directory>/sessions/<stem>.json          a session's manifest; stem = sha256(session key)[:40]
    <directory>/chunks/<chunk name>.safetensors
    <directory>/<stem>.safetensors            a whole session in format 1

Not thread-safe: KVFileStore calls it with its lock held. A chunk's file is deleted here, when its last
holder (a session, or a write in progress) lets go.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from storage.atomic_files import TMP_SUFFIX
from storage.kv_format import MANIFEST_SUFFIX, SUFFIX, chunk_names, read_manifest


_WRITING = -1  # a chunk's size while its first write is in progress


@dataclass
class StoredSession:
    tokens: int  # a bound of its token count (exact for a manifest)
    chunks: list[str]  # chunk names, in order; empty for a format-1 file
    nbytes: int  # its manifest's size (or its format-1 file's)
    used: float  # time.time() of its last read or write
    legacy: bool = False  # a format-1 file


class KVIndex:
    def __init__(self, directory: Path):
        self.directory = directory
        self.sessions_dir, self.chunks_dir = directory / "sessions", directory / "chunks"
        self.sessions: OrderedDict[str, StoredSession] = OrderedDict()  # stem -> session; LRU first
        self.chunks: dict[str, list[int]] = {}  # chunk name -> [file bytes or _WRITING, holders]
        self.nbytes = 0  # every manifest, format-1 file and chunk, each once
        for d in (directory, self.sessions_dir, self.chunks_dir):
            d.mkdir(parents=True, exist_ok=True)

    def manifest(self, stem: str) -> Path:
        return self.sessions_dir / (stem + MANIFEST_SUFFIX)

    def chunk(self, name: str) -> Path:
        return self.chunks_dir / (name + SUFFIX)

    def legacy(self, stem: str) -> Path:
        return self.directory / (stem + SUFFIX)

    def file_of(self, stem: str, session: StoredSession) -> Path:
        return self.legacy(stem) if session.legacy else self.manifest(stem)

    # ---- start-up ----

    def load(self, token_bytes: int, stem_of) -> int:
        """List the folder (manifests are read, no KV): returns how many stray files were removed (temporaries
        of interrupted writes, manifests unreadable, misnamed (stem_of(session key) differs) or missing a
        chunk, and chunks no session holds)."""
        strays = 0
        for d in (self.directory, self.sessions_dir, self.chunks_dir):
            for path in d.iterdir():
                if path.name.endswith(TMP_SUFFIX):
                    path.unlink(missing_ok=True)
                    strays += 1
        sizes = {p.name[:-len(SUFFIX)]: p.stat().st_size for p in self.chunks_dir.iterdir() if p.name.endswith(SUFFIX)}
        found = []
        for path in self.sessions_dir.iterdir():
            try:
                m = read_manifest(path)
                names = chunk_names(m["model_fingerprint"], m["dtype"], m["token_ids"], m["chunk_tokens"])
                if path.stem != stem_of(m["session_key"]) or any(n not in sizes for n in names):
                    raise ValueError("misnamed, or a chunk is missing")
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                strays += 1
                continue
            st = path.stat()
            found.append((st.st_mtime, path.stem, StoredSession(len(m["token_ids"]), names, st.st_size, st.st_mtime)))
        for path in self.directory.iterdir():
            if path.name.endswith(SUFFIX) and path.is_file():
                st = path.stat()  # its size bounds its tokens
                found.append((st.st_mtime, path.stem, StoredSession(st.st_size // token_bytes, [], st.st_size,
                                                                    st.st_mtime, legacy=True)))
        for _, stem, session in sorted(found, key=lambda f: f[0]):
            for name in session.chunks:
                if name in self.chunks:
                    self.hold(name)
                else:
                    self.add_chunk(name, sizes[name])
            self.add(stem, session)
        for name in sizes.keys() - self.chunks.keys():
            self.chunk(name).unlink(missing_ok=True)
            strays += 1
        return strays

    # ---- sessions ----

    def add(self, stem: str, session: StoredSession) -> None:
        """session (whose chunks are held for it) is now stem's, most recently used; stem's old one goes."""
        self.drop(stem, keep_file=True)
        self.sessions[stem] = session
        self.nbytes += session.nbytes

    def touch(self, stem: str, session: StoredSession, now: float) -> None:
        if self.sessions.get(stem) is session:
            session.used = now
            self.sessions.move_to_end(stem)

    def drop(self, stem: str, keep_file: bool = False) -> bool:
        """Forget a session: its manifest (unless keep_file: just replaced) or format-1 file, and the
        chunks only it held. False if absent."""
        session = self.sessions.pop(stem, None)
        if session is None:
            return False
        self.nbytes -= session.nbytes
        if session.legacy:
            self.legacy(stem).unlink(missing_ok=True)
        elif not keep_file:
            self.manifest(stem).unlink(missing_ok=True)
        for name in session.chunks:
            self.release(name)
        return True

    # ---- chunks ----

    def add_chunk(self, name: str, size: int) -> None:
        """A chunk found at start-up, with one holder."""
        self.chunks[name] = [size, 1]
        self.nbytes += size

    def hold(self, name: str) -> None:
        self.chunks[name][1] += 1

    def claim(self, names: list[str]) -> set[str]:
        """A write is starting that needs these chunks: each gets one holder more (so that it stays, or,
        being written, is not deleted before it is done). Returns those complete on disk; the others are
        the write's to write (another write may be writing one too: same name, same bytes)."""
        found = set()
        for name in names:
            chunk = self.chunks.setdefault(name, [_WRITING, 0])
            chunk[1] += 1
            if chunk[0] != _WRITING:
                found.add(name)
        return found

    def num_complete(self) -> int:
        return sum(1 for size, _ in self.chunks.values() if size != _WRITING)

    def complete(self, name: str, size: int) -> None:
        """A claimed chunk's file is in place."""
        chunk = self.chunks[name]
        if chunk[0] == _WRITING:
            chunk[0] = size
            self.nbytes += size

    def release(self, name: str) -> None:
        """One holder fewer; the chunk's file goes with its last holder."""
        chunk = self.chunks.get(name)
        if chunk is not None:
            chunk[1] -= 1
            if chunk[1] <= 0:
                self.drop_chunk(name)

    def drop_chunk(self, name: str) -> None:
        """The chunk's file goes now (its last holder left, or it is bad: its other holders will find it
        missing and recompute)."""
        chunk = self.chunks.pop(name, None)
        if chunk is not None and chunk[0] != _WRITING:
            self.nbytes -= chunk[0]
        self.chunk(name).unlink(missing_ok=True)
