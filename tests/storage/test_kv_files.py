"""KV files: byte-exact round trip, standard safetensors, atomic writes, and every bad file refused."""

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open

from storage.kv_files import KVFileInvalid, KVFileStore, KVLayout

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float32, fingerprint="model-a")


def _kv(num_tokens: int, capacity: int = 256, seed: int = 0) -> torch.Tensor:
    data = torch.empty(3, 2, 2, capacity, 8)
    data[:, :, :, :num_tokens] = torch.randn(3, 2, 2, num_tokens, 8, generator=torch.Generator().manual_seed(seed))
    return data


def _alloc(n: int) -> torch.Tensor:
    return torch.full((3, 2, 2, max(n, 1) + 5, 8), float("nan"))


@pytest.fixture
def store(tmp_path) -> KVFileStore:
    return KVFileStore(tmp_path, LAYOUT, max_bytes=1 << 30)


def test_round_trip_is_byte_exact_and_a_standard_safetensors_file(store, tmp_path):
    data, ids = _kv(40), list(range(1000, 1040))
    store.write("session-1", data, ids)
    loaded, loaded_ids = store.read_into("session-1", _alloc)
    assert loaded_ids == ids
    assert torch.equal(loaded[:, :, :, :40].contiguous().view(torch.int32), data[:, :, :, :40].contiguous().view(torch.int32))
    [path] = tmp_path.iterdir()
    with safe_open(path, "pt") as f:
        assert torch.equal(f.get_tensor("kv"), data[:, :, :, :40])
        meta = f.metadata()
    assert meta["format_version"] == "1" and meta["model_fingerprint"] == "model-a"
    assert json.loads(meta["token_ids"]) == ids and meta["checksum"].startswith("xxh3_128:")


def test_file_name_is_a_hash_never_client_text(store, tmp_path):
    store.write("../../etc/passwd", _kv(4), [1, 2, 3, 4])
    [path] = tmp_path.iterdir()
    assert path.parent == tmp_path and "passwd" not in path.name and len(path.stem) == 40


def test_no_temporary_file_remains_and_strays_are_removed_at_start(store, tmp_path):
    store.write("s", _kv(4), [1, 2, 3, 4])
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]
    (tmp_path / "abc.safetensors.123.456.tmp").write_bytes(b"half a file")
    reopened = KVFileStore(tmp_path, LAYOUT, max_bytes=1 << 30)
    assert reopened.stats.num_stray_removed == 1 and reopened.contains("s")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def _path(store, key):
    return store.directory / store.file_name(key)


def _truncate(path):
    os.truncate(path, path.stat().st_size - 7)


def _flip_payload_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x01
    path.write_bytes(bytes(raw))


def _rewrite_meta(**changes):
    def edit(path):
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header["__metadata__"].update(changes)
        new = json.dumps(header).encode()
        new += b" " * (-len(new) % 8)
        path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return edit


def _garbage(path):
    path.write_bytes(b"\xff" * 64)


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("damage,reason", [
    (_truncate, "truncated"),
    (_flip_payload_byte, "corrupt"),
    (_rewrite_meta(model_fingerprint="model-b"), "model_mismatch"),
    (_rewrite_meta(format_version="0"), "format_version"),
    (_rewrite_meta(token_ids="[1, 2]"), "layout_mismatch"),
    (_garbage, "truncated"),
    (_empty, "truncated"),
])
def test_bad_files_are_refused_deleted_and_counted(store, damage, reason):
    store.write("s", _kv(30), list(range(30)))
    damage(_path(store, "s"))
    with pytest.raises(KVFileInvalid) as exc:
        store.read_into("s", _alloc)
    assert exc.value.reason == reason
    assert not _path(store, "s").exists() and not store.contains("s")
    assert store.stats.invalid == {reason: 1}


def test_a_file_deleted_behind_our_back_is_missing(store):
    store.write("s", _kv(3), [1, 2, 3])
    _path(store, "s").unlink()
    with pytest.raises(KVFileInvalid) as exc:
        store.read_into("s", _alloc)
    assert exc.value.reason == "missing"


def test_disk_limit_deletes_least_recently_used_files(tmp_path):
    one = KVFileStore(tmp_path, LAYOUT, max_bytes=1 << 30)
    size = one.write("a", _kv(50), list(range(50)))
    store = KVFileStore(tmp_path, LAYOUT, max_bytes=int(size * 2.5))
    store.write("b", _kv(50), list(range(50)))
    store.read_into("a", _alloc)  # a is now more recently used than b
    store.write("c", _kv(50), list(range(50)))
    assert store.contains("a") and store.contains("c") and not store.contains("b")
    assert store.total_bytes <= store.max_bytes and store.stats.num_evicted == 1


def test_expire_and_delete(store):
    store.write("old", _kv(3), [1, 2, 3])
    assert store.expire(3600) == 0 and store.contains("old")
    assert store.expire(-1) == 1 and not store.contains("old")
    store.write("x", _kv(3), [1, 2, 3])
    assert store.delete("x") is True and not _path(store, "x").exists()
    assert store.delete("x") is False


def test_scan_finds_the_conversations_on_disk_by_key(tmp_path):
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30)
    store.write("openai-anon:abc", _kv(5), [1, 2, 3, 4, 5])
    store.write("s2", _kv(2), [7, 8])
    again = KVFileStore(tmp_path, LAYOUT, 1 << 30)  # a restart
    assert sorted(again.scan_prefixes()) == [("openai-anon:abc", [1, 2, 3, 4, 5]), ("s2", [7, 8])]
    other_model = KVFileStore(tmp_path, KVLayout(LAYOUT.num_layers, LAYOUT.num_kv_heads, LAYOUT.head_dim,
                                                 LAYOUT.dtype, "another-model"), 1 << 30)
    assert other_model.scan_prefixes() == []


def test_a_float16_store_round_trips_at_half_the_size_and_refuses_float32_files(tmp_path):
    half = KVLayout(LAYOUT.num_layers, LAYOUT.num_kv_heads, LAYOUT.head_dim, torch.float16, LAYOUT.fingerprint)
    wide = KVFileStore(tmp_path / "wide", LAYOUT, max_bytes=1 << 30)
    narrow = KVFileStore(tmp_path / "narrow", half, max_bytes=1 << 30)
    data, ids = _kv(40).half(), list(range(40))
    narrow.write("s", data, ids)
    wide.write("s", _kv(40), ids)
    loaded, _ = narrow.read_into("s", lambda n: torch.full((3, 2, 2, n + 5, 8), float("nan"), dtype=torch.float16))
    assert loaded.dtype == torch.float16 and torch.equal(loaded[:, :, :, :40], data[:, :, :, :40])
    [small], [big] = (tmp_path / "narrow").iterdir(), (tmp_path / "wide").iterdir()
    assert small.stat().st_size < 0.6 * big.stat().st_size
    # a float32 file found by a float16 server (the setting changed) is refused, not misread
    small.unlink()
    big.rename(small)
    with pytest.raises(KVFileInvalid) as exc:
        KVFileStore(tmp_path / "narrow", half, max_bytes=1 << 30).read_into("s", _alloc)
    assert exc.value.reason == "layout_mismatch"
