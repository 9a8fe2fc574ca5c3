"""KV files: byte-exact round trip through content-named chunks (standard safetensors files), chunks shared
by the sessions that hold them and written once, atomic writes, every bad file refused, format 1 still read."""

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open

from storage.kv_files import KVFileInvalid, KVFileStore, KVLayout
from storage.kv_format import write_chunk

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float32, fingerprint="model-a")
C = 16  # tokens per chunk in these tests


def _kv(num_tokens: int, capacity: int = 256, seed: int = 0) -> torch.Tensor:
    data = torch.empty(3, 2, 2, capacity, 8)
    data[:, :, :, :num_tokens] = torch.randn(3, 2, 2, num_tokens, 8, generator=torch.Generator().manual_seed(seed))
    return data


def _alloc(n: int) -> torch.Tensor:
    return torch.full((3, 2, 2, max(n, 1) + 5, 8), float("nan"))


def _same(a: torch.Tensor, b: torch.Tensor, n: int) -> bool:
    """Bit-exact over the first n positions."""
    return torch.equal(a[:, :, :, :n].contiguous().view(torch.int32), b[:, :, :, :n].contiguous().view(torch.int32))


def _chunk_files(store):
    return sorted(p for p in store.chunks_dir.iterdir())


@pytest.fixture
def store(tmp_path) -> KVFileStore:
    return KVFileStore(tmp_path, LAYOUT, max_bytes=1 << 30, chunk_tokens=C)


def test_round_trip_is_byte_exact_and_each_chunk_a_standard_safetensors_file(store):
    data, ids = _kv(40), list(range(1000, 1040))
    store.write("session-1", data, ids)
    loaded, loaded_ids = store.read_into("session-1", _alloc)
    assert loaded_ids == ids and _same(loaded, data, 40)
    files = _chunk_files(store)
    assert len(files) == 3 == store.num_chunks  # 16 + 16 + 8 tokens
    seen = []
    for path in files:
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            assert meta["format_version"] == "2" and meta["model_fingerprint"] == "model-a"
            seen.append((json.loads(meta["token_ids"]), f.get_tensor("kv")))
    seen.sort(key=lambda s: s[0][0])
    assert [t for ids_, _ in seen for t in ids_] == ids
    assert torch.equal(torch.cat([kv for _, kv in seen], dim=3), data[:, :, :, :40])


def test_file_names_are_hashes_never_client_text(store):
    store.write("../../etc/passwd", _kv(4), [1, 2, 3, 4])
    names = [p for d in (store.directory, store.sessions_dir, store.chunks_dir) for p in d.iterdir() if p.is_file()]
    assert names and all("passwd" not in p.name and p.parent in (store.sessions_dir, store.chunks_dir) for p in names)


def test_branches_share_their_common_chunks_on_disk_and_each_reads_back_exactly(store):
    a, b = _kv(100, seed=1), _kv(100, seed=1)
    b[:, :, :, 70:] = torch.randn(3, 2, 2, 186, 8)  # B leaves A at position 70
    ids_a, ids_b = list(range(100)), list(range(70)) + list(range(500, 530))
    size_a = store.write("s#a", a, ids_a)
    size_b = store.write("s", b, ids_b)
    assert store.stats.chunks_reused == 4  # positions 0-63: the whole chunks both begin with
    assert size_b < 0.5 * size_a and store.total_bytes == size_a + size_b
    for key, data, ids in (("s#a", a, ids_a), ("s", b, ids_b)):
        loaded, loaded_ids = store.read_into(key, _alloc)
        assert loaded_ids == ids and _same(loaded, data, len(ids))
    assert store.delete("s#a") is True
    loaded, _ = store.read_into("s", _alloc)  # the shared chunks stay while a session holds them
    assert _same(loaded, b, 100) and len(_chunk_files(store)) == store.num_chunks == 7
    assert store.delete("s") is True
    assert _chunk_files(store) == [] and store.total_bytes == 0 and store.num_sessions == 0


def test_a_session_spilled_again_writes_only_its_new_chunks(store):
    data = _kv(90)
    store.write("s", data, list(range(40)))  # chunks of 16, 16 and 8 tokens
    store.write("s", data, list(range(90)))  # a later turn: the two whole chunks are on disk already
    assert store.stats.chunks_written == 3 + 4 and store.stats.chunks_reused == 2
    assert len(_chunk_files(store)) == store.num_chunks == 6  # the old 8-token chunk went
    loaded, ids = store.read_into("s", _alloc)
    assert ids == list(range(90)) and _same(loaded, data, 90)


def test_no_temporary_file_remains_and_strays_are_removed_at_start(store, tmp_path):
    store.write("s", _kv(20), list(range(20)))
    assert not any(p.name.endswith(".tmp") for d in (store.sessions_dir, store.chunks_dir) for p in d.iterdir())
    (store.chunks_dir / "abc.safetensors.123.456.tmp").write_bytes(b"half a file")
    (store.chunks_dir / ("0" * 40 + ".safetensors")).write_bytes(b"a chunk no session holds")
    (store.sessions_dir / ("1" * 40 + ".json")).write_bytes(b"{not json")
    reopened = KVFileStore(tmp_path, LAYOUT, max_bytes=1 << 30, chunk_tokens=C)
    assert reopened.stats.num_stray_removed == 3 and reopened.contains("s")
    assert reopened.num_chunks == 2 == len(_chunk_files(reopened)) and reopened.total_bytes == store.total_bytes
    loaded, ids = reopened.read_into("s", _alloc)
    assert ids == list(range(20))


def _last_chunk(store):
    """The file of the chunk holding the session's last positions (the one no smaller chunk precedes)."""
    return max(_chunk_files(store), key=lambda p: json.loads(safe_open(p, "pt").metadata()["token_ids"])[0])


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
    (_rewrite_meta(token_ids=json.dumps(list(range(33, 47)))), "corrupt"),  # another chunk's tokens
    (_rewrite_meta(prev_chunk="f" * 40), "corrupt"),
    (_garbage, "truncated"),
    (_empty, "truncated"),
    (lambda path: path.unlink(), "missing"),
])
def test_bad_chunks_are_refused_deleted_and_counted(store, damage, reason):
    store.write("s", _kv(46), list(range(46)))
    bad = _last_chunk(store)
    damage(bad)
    with pytest.raises(KVFileInvalid) as exc:
        store.read_into("s", _alloc)
    assert exc.value.reason == reason
    assert not bad.exists() and not store.contains("s") and store.stats.invalid == {reason: 1}
    assert _chunk_files(store) == [] and list(store.sessions_dir.iterdir()) == [] and store.total_bytes == 0


def test_a_bad_manifest_is_refused(store):
    store.write("s", _kv(3), [1, 2, 3])
    [manifest] = store.sessions_dir.iterdir()
    manifest.write_text('{"format_version": "2"}')
    with pytest.raises(KVFileInvalid) as exc:
        store.read_into("s", _alloc)
    assert exc.value.reason == "corrupt" and not store.contains("s") and _chunk_files(store) == []


def test_disk_limit_deletes_least_recently_used_sessions(tmp_path):
    one = KVFileStore(tmp_path / "probe", LAYOUT, max_bytes=1 << 30, chunk_tokens=C)
    size = one.write("a", _kv(50), list(range(50)))
    store = KVFileStore(tmp_path / "kv", LAYOUT, max_bytes=int(size * 2.5), chunk_tokens=C)
    for key, seed in (("a", 1), ("b", 2)):
        store.write(key, _kv(50, seed=seed), list(range(seed * 100, seed * 100 + 50)))
    store.read_into("a", _alloc)  # a is now more recently used than b
    store.write("c", _kv(50, seed=3), list(range(300, 350)))
    assert store.contains("a") and store.contains("c") and not store.contains("b")
    assert store.total_bytes <= store.max_bytes and store.stats.num_evicted == 1
    assert len(_chunk_files(store)) == store.num_chunks == 8


def test_expire_and_delete(store):
    store.write("old", _kv(3), [1, 2, 3])
    assert store.expire(3600) == 0 and store.contains("old")
    assert store.expire(-1) == 1 and not store.contains("old") and _chunk_files(store) == []
    store.write("x", _kv(3), [1, 2, 3])
    assert store.delete("x") is True and list(store.sessions_dir.iterdir()) == []
    assert store.delete("x") is False


def test_rename_moves_the_kv_to_the_new_key_and_replaces_its_kv(store, tmp_path):
    store.write("s", _kv(20, seed=1), list(range(20)))
    store.write("s#b", _kv(20, seed=2), list(range(50, 70)))
    assert store.rename("s", "s#b") is True and not store.contains("s") and store.num_sessions == 1
    loaded, ids = store.read_into("s#b", _alloc)
    assert ids == list(range(20)) and _same(loaded, _kv(20, seed=1), 20)
    assert store.num_chunks == 2 == len(_chunk_files(store))  # s#b's own chunks went with its KV
    assert KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C).scan_prefixes() == [("s#b", list(range(20)))]
    assert store.rename("nobody", "x") is False


def test_scan_finds_the_conversations_on_disk_by_key(tmp_path):
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30)
    store.write("openai-anon:abc", _kv(5), [1, 2, 3, 4, 5])
    store.write("s2", _kv(2), [7, 8])
    again = KVFileStore(tmp_path, LAYOUT, 1 << 30)  # a restart
    assert sorted(again.scan_prefixes()) == [("openai-anon:abc", [1, 2, 3, 4, 5]), ("s2", [7, 8])]
    other_model = KVFileStore(tmp_path, KVLayout(LAYOUT.num_layers, LAYOUT.num_kv_heads, LAYOUT.head_dim,
                                                 LAYOUT.dtype, "another-model"), 1 << 30)
    assert other_model.scan_prefixes() == []
    with pytest.raises(KVFileInvalid) as exc:
        other_model.read_into("s2", _alloc)
    assert exc.value.reason == "model_mismatch"
    # a server of another model on the same folder uses none of its KV, and deletes only what it tried
    back = KVFileStore(tmp_path, LAYOUT, 1 << 30)
    assert back.scan_prefixes() == [("openai-anon:abc", [1, 2, 3, 4, 5])]
    assert back.read_into("openai-anon:abc", _alloc)[1] == [1, 2, 3, 4, 5]


def test_a_file_of_format_1_is_read_then_replaced_by_chunks(tmp_path):
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)
    data, ids = _kv(30), list(range(30))
    legacy = tmp_path / (store.file_name("old-session") + ".safetensors")
    with open(legacy, "wb") as f:
        write_chunk(f, LAYOUT, [data[:, :, :, :30]], ids, "")
    _rewrite_meta(format_version="1", session_key="old-session")(legacy)
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)  # a start-up finding it
    assert store.contains("old-session") and store.scan_prefixes() == [("old-session", ids)]
    assert store.nbytes("old-session") >= 30 * LAYOUT.token_bytes()
    loaded, loaded_ids = store.read_into("old-session", _alloc)
    assert loaded_ids == ids and _same(loaded, data, 30)
    store.write("old-session", loaded, ids)
    assert not legacy.exists() and store.num_chunks == 2 and store.read_into("old-session", _alloc)[1] == ids


def test_a_float16_store_round_trips_at_half_the_size_and_refuses_float32_files(tmp_path):
    half = KVLayout(LAYOUT.num_layers, LAYOUT.num_kv_heads, LAYOUT.head_dim, torch.float16, LAYOUT.fingerprint)
    wide = KVFileStore(tmp_path / "wide", LAYOUT, max_bytes=1 << 30)
    narrow = KVFileStore(tmp_path / "narrow", half, max_bytes=1 << 30)
    data, ids = _kv(40).half(), list(range(40))
    narrow.write("s", data, ids)
    wide.write("s", _kv(40), ids)
    loaded, _ = narrow.read_into("s", lambda n: torch.full((3, 2, 2, n + 5, 8), float("nan"), dtype=torch.float16))
    assert loaded.dtype == torch.float16 and torch.equal(loaded[:, :, :, :40], data[:, :, :, :40])
    assert narrow.total_bytes < 0.6 * wide.total_bytes
    # a float32 chunk in a float16 server's file is refused, not misread
    [small], [big] = _chunk_files(narrow), _chunk_files(wide)
    assert small.name != big.name  # the KV dtype is part of every chunk's name
    big.rename(small)
    with pytest.raises(KVFileInvalid) as exc:
        KVFileStore(tmp_path / "narrow", half, max_bytes=1 << 30).read_into("s", _alloc)
    assert exc.value.reason == "layout_mismatch"


def test_a_format_1_file_renamed_over_a_chunked_session_leaves_one_consistent_folder(tmp_path):
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)
    legacy = tmp_path / (store.file_name("old") + ".safetensors")
    with open(legacy, "wb") as f:
        write_chunk(f, LAYOUT, [_kv(30)[:, :, :, :30]], list(range(30)), "")
    _rewrite_meta(format_version="1", session_key="old")(legacy)
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)
    store.write("new", _kv(20, seed=5), list(range(100, 120)))
    assert store.rename("old", "new") is True
    assert _chunk_files(store) == [] and list(store.sessions_dir.iterdir()) == []  # new's own KV went
    again = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)  # a restart finds just the renamed KV
    assert again.stats.num_stray_removed == 0 and again.total_bytes == store.total_bytes
    assert again.read_into("new", _alloc)[1] == list(range(30))


def test_writes_and_deletes_on_two_threads_never_lose_a_chunk_a_session_holds(tmp_path):
    import threading
    store = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)
    data = _kv(64)
    common = list(range(48))  # three whole chunks every session begins with

    def writer():
        for i in range(150):
            store.write(f"w{i}", data, common + [1000 + i] * 16)

    def deleter():
        for i in range(150):
            store.write(f"d{i}", data, common + [2000 + i] * 16)
            store.delete(f"d{i}")
            store.delete(f"w{max(i - 1, 0)}")

    threads = [threading.Thread(target=writer), threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(150):
        if store.contains(f"w{i}"):
            loaded, ids = store.read_into(f"w{i}", _alloc)
            assert ids == common + [1000 + i] * 16 and _same(loaded, data, 64)
    assert len(_chunk_files(store)) == store.num_chunks
    again = KVFileStore(tmp_path, LAYOUT, 1 << 30, chunk_tokens=C)
    assert again.stats.num_stray_removed == 0 and again.total_bytes == store.total_bytes
