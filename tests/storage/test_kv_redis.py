"""The shared KV tier on Redis (storage/kv_redis.py), against a real redis-server: what one replica writes
another reads back bit-exact, chunks are stored once whoever writes them, an evicted or bad chunk means
recompute, and a Redis that does not answer fails fast and comes back."""

import subprocess

import pytest
import redis
import torch

from storage import KVLayout
from storage.errors import KVFileInvalid
from storage.kv_redis import RedisKVStore, RedisUnavailable
from tests.helpers.redis_server import redis_server, redis_url  # noqa: F401 - fixtures

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float32, fingerprint="model-a")
C = 16


def _kv(num_tokens: int, seed: int = 0) -> torch.Tensor:
    data = torch.empty(3, 2, 2, 256, 8)
    data[:, :, :, :num_tokens] = torch.randn(3, 2, 2, num_tokens, 8, generator=torch.Generator().manual_seed(seed))
    return data


def _alloc(n: int) -> torch.Tensor:
    return torch.full((3, 2, 2, n + 5, 8), float("nan"))


def _same(a, b, n) -> bool:
    return torch.equal(a[:, :, :, :n].contiguous().view(torch.int32), b[:, :, :, :n].contiguous().view(torch.int32))


def _tier(url: str, **kw) -> RedisKVStore:
    return RedisKVStore(url, LAYOUT, ttl_seconds=3600, chunk_tokens=C, **kw)


def test_what_one_replica_writes_another_reads_back_exactly(redis_url):
    a, b = _tier(redis_url), _tier(redis_url)  # two replicas, one Redis
    data, ids = _kv(40), list(range(40))
    a.write("s", data, ids)
    assert b.contains("s") and b.nbytes("s") == 40 * LAYOUT.token_bytes()
    loaded, loaded_ids = b.read_into("s", _alloc)
    assert loaded_ids == ids and _same(loaded, data, 40)
    assert not b.contains("other") and b.nbytes("other") == 0


def test_chunks_are_stored_once_whoever_writes_them(redis_url):
    a, b = _tier(redis_url), _tier(redis_url)
    data = _kv(100)
    a.write("s#a1", data, list(range(100)))
    b.write("s", data, list(range(70)) + [7] * 30)  # a branch written by another replica
    assert b.stats.chunks_reused == 4  # positions 0-63
    r = redis.Redis.from_url(redis_url)
    assert len(r.keys("kvchat:chunk:*")) == 7 + 3 and len(r.keys("kvchat:head:*")) == 2
    assert r.ttl(next(iter(r.keys("kvchat:chunk:*")))) > 3000
    assert b.read_into("s", _alloc)[1] == list(range(70)) + [7] * 30


def test_an_evicted_chunk_means_recompute_and_the_manifest_goes(redis_url):
    tier = _tier(redis_url)
    tier.write("s", _kv(40), list(range(40)))
    r = redis.Redis.from_url(redis_url)
    r.delete(r.keys("kvchat:chunk:*")[0])  # what Redis's LRU eviction does
    with pytest.raises(KVFileInvalid) as exc:
        tier.read_into("s", _alloc)
    assert exc.value.reason == "missing" and tier.stats.chunk_misses == 1 and not tier.contains("s")


def test_a_bad_chunk_is_refused_and_deleted(redis_url):
    tier = _tier(redis_url)
    tier.write("s", _kv(20), list(range(20)))
    r = redis.Redis.from_url(redis_url)
    key = r.keys("kvchat:chunk:*")[0]
    value = bytearray(r.get(key))
    value[-3] ^= 1
    r.set(key, bytes(value))
    with pytest.raises(KVFileInvalid) as exc:
        tier.read_into("s", _alloc)
    assert exc.value.reason in ("corrupt", "missing")  # the chunk read second may find the first one gone
    assert not tier.contains("s")
    assert len(r.keys("kvchat:chunk:*")) <= 1  # the bad chunk went


def test_another_model_reads_nothing(redis_url):
    _tier(redis_url).write("s", _kv(5), list(range(5)))
    other = RedisKVStore(redis_url, KVLayout(3, 2, 8, torch.float32, "model-b"), ttl_seconds=3600, chunk_tokens=C)
    with pytest.raises(KVFileInvalid) as exc:
        other.read_into("s", _alloc)
    assert exc.value.reason == "model_mismatch"


def test_rename_and_delete(redis_url):
    tier = _tier(redis_url)
    tier.write("s", _kv(5), list(range(5)))
    tier.write("s#b", _kv(5, seed=1), list(range(50, 55)))
    assert tier.rename("s", "s#b") is True and not tier.contains("s")
    assert tier.read_into("s#b", _alloc)[1] == list(range(5))
    assert tier.rename("nobody", "x") is False
    assert tier.delete("s#b") is True and not tier.contains("s#b") and tier.delete("s#b") is False


def test_a_redis_that_does_not_answer_fails_fast_then_comes_back(tmp_path):
    script = str(__import__("tests.helpers.redis_server", fromlist=["SCRIPT"]).SCRIPT)
    url = subprocess.run(["bash", script, "start", str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    tier = _tier(url, retry_seconds=0.2)
    tier.write("s", _kv(5), list(range(5)))
    subprocess.run(["bash", script, "stop", str(tmp_path)], check=True)
    with pytest.raises(RedisUnavailable):
        tier.write("t", _kv(5), list(range(5)))
    assert tier.stats.is_down and not tier.contains("s") and tier.nbytes("s") == 0 and not tier.ping()
    port = url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", port, "--daemonize", "yes", "--save", "",
                    "--dir", str(tmp_path), "--pidfile", str(tmp_path / "redis.pid")], check=True)
    try:
        for _ in range(50):
            if tier.ping():
                break
            __import__("time").sleep(0.05)
        assert tier.ping() and not tier.stats.is_down
        tier.write("t", _kv(5), list(range(5)))  # an empty Redis again: written anew
        assert tier.read_into("t", _alloc)[1] == list(range(5))
        assert tier.info()["policy"] in ("noeviction", "allkeys-lru")
    finally:
        subprocess.run(["bash", script, "stop", str(tmp_path)], check=False)
