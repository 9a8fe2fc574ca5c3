"""A replica's tiers below RAM (storage/kv_tiers.py): KV one replica wrote is read by another from the shared
tier; a replica's own disk serves when Redis lost the session or does not answer."""

import subprocess

import pytest
import redis
import torch

from storage import KVFileStore, KVLayout
from storage.errors import KVFileInvalid
from storage.kv_redis import RedisKVStore
from storage.kv_tiers import KVTiers
from tests.helpers.redis_server import SCRIPT, redis_server, redis_url  # noqa: F401 - fixtures

LAYOUT = KVLayout(num_layers=3, num_kv_heads=2, head_dim=8, dtype=torch.float32, fingerprint="model-a")


def _kv(num_tokens: int, seed: int = 0) -> torch.Tensor:
    data = torch.empty(3, 2, 2, 512, 8)
    data[:, :, :, :num_tokens] = torch.randn(3, 2, 2, num_tokens, 8, generator=torch.Generator().manual_seed(seed))
    return data


def _alloc(n: int) -> torch.Tensor:
    return torch.full((3, 2, 2, n + 5, 8), float("nan"))


def _replica(tmp_path, name: str, url: str) -> KVTiers:
    return KVTiers(KVFileStore(tmp_path / name, LAYOUT, 1 << 30),
                   RedisKVStore(url, LAYOUT, ttl_seconds=3600, retry_seconds=0.2))


def test_another_replica_reads_the_kv_from_the_shared_tier(tmp_path, redis_url):
    a, b = _replica(tmp_path, "a", redis_url), _replica(tmp_path, "b", redis_url)
    data = _kv(300)
    a.write("s", data, list(range(300)))
    assert b.contains("s") and b.nbytes("s") == 300 * LAYOUT.token_bytes() and b.num_sessions == 0
    kv, ids, tier = b.restore_into("s", _alloc)
    assert tier == "shared" and ids == list(range(300)) and torch.equal(kv[:, :, :, :300], data[:, :, :, :300])
    assert b.shared_stats.num_read == 1 and a.shared_stats.num_written == 1


def test_the_local_disk_serves_when_redis_lost_the_session(tmp_path, redis_url):
    a, b = _replica(tmp_path, "a", redis_url), _replica(tmp_path, "b", redis_url)
    a.write("s", _kv(20), list(range(20)))
    redis.Redis.from_url(redis_url).flushall()
    assert a.restore_into("s", _alloc)[2] == "disk"
    assert not b.contains("s")
    with pytest.raises(KVFileInvalid):
        b.restore_into("s", _alloc)


def test_a_redis_that_does_not_answer_leaves_the_local_tier_working(tmp_path):
    url = subprocess.run(["bash", str(SCRIPT), "start", str(tmp_path / "redis")], capture_output=True, text=True,
                         check=True).stdout.strip()
    a = _replica(tmp_path, "a", url)
    a.write("s", _kv(20), list(range(20)))
    subprocess.run(["bash", str(SCRIPT), "stop", str(tmp_path / "redis")], check=True)
    a.write("t", _kv(30), list(range(30)))  # the local copy is written; the shared one is skipped
    assert a.contains("t") and a.restore_into("t", _alloc)[1:] == (list(range(30)), "disk")
    assert a.restore_into("s", _alloc)[2] == "disk"
    assert a.check_writable() and not a.shared.ping() and a.shared_stats.is_down
    assert a.delete("t") and not a.contains("t")
