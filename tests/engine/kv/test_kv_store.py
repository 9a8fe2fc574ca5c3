"""The KV store: LRU spill to disk, restore, prefetch, TTL, and limits that are never exceeded."""

from __future__ import annotations

import time

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.kv import KVStore, KVStoreConfig, PrefixSharing, SessionKV
from storage import KVFileStore, KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=4, dtype=torch.float32, fingerprint="m")
BLOCK = 2 * 2 * 1 * 4 * 4 * 256  # bytes of a 256-token capacity step


def _new_kv(capacity: int) -> SessionKV:
    return SessionKV(2, 1, 4, torch.float32, capacity)


class Harness:
    """A store whose I/O completions run when the test says so (as the engine thread would)."""

    def __init__(self, tmp_path, **limits):
        self.pending = []
        self.disk = KVFileStore(tmp_path, LAYOUT, max_bytes=limits.pop("max_disk_bytes", 1 << 30))
        self.store = KVStore(KVStoreConfig(**limits), _new_kv, self.disk, self.pending.append)

    def settle(self) -> None:
        """Wait for the I/O thread, then run its completions; repeat until quiet."""
        while True:
            self.store.io.flush()
            if not self.pending:
                return
            while self.pending:
                self.pending.pop(0)()

    def turn(self, key: str, tokens: list[int]) -> str:
        """acquire (waiting for I/O as needed), append tokens as a forward pass would, release."""
        for _ in range(10):
            got = self.store.acquire(key, len(tokens))
            if got is not None:
                break
            self.settle()
        kv, source = got
        kv.truncate(0)
        n = len(tokens)
        kv.data[:, :, :, :n] = torch.arange(n, dtype=torch.float32)[None, None, None, :, None] + tokens[0]
        kv.token_ids.extend(tokens)
        self.store.release(key)
        return source


def test_least_recently_used_idle_session_spills_first(tmp_path):
    h = Harness(tmp_path, max_ram_bytes=3 * BLOCK)
    for key in "abc":
        assert h.turn(key, [1, 2, 3]) == "miss"
    h.turn("a", [1, 2, 3, 4])  # a is now most recently used
    h.turn("d", [9])  # needs room: b goes to disk
    h.settle()
    assert h.store.tier_of("b") == "disk"
    assert [h.store.tier_of(k) for k in "acd"] == ["ram"] * 3
    assert h.store.stats.spills == 1 and h.store.stats.evictions == {"pressure": 1}


def test_restore_is_byte_exact_and_reported_as_disk(tmp_path):
    h = Harness(tmp_path)
    h.turn("s", list(range(100, 140)))
    before = h.store.entries["s"].kv.data[:, :, :, :40].clone()
    h.store.spill("s")
    h.settle()
    assert h.store.tier_of("s") == "disk"
    assert h.store.acquire("s", 60) is None  # being read
    h.settle()
    kv, source = h.store.acquire("s", 60)
    assert source == "disk" and kv.token_ids == list(range(100, 140))
    assert torch.equal(kv.data[:, :, :, :40], before)
    h.store.release("s")
    assert h.store.acquire("s", 60)[1] == "ram"  # the next turn finds it in RAM
    assert h.store.stats.hits_disk == 1 and h.store.stats.restores == 1


def test_prefetch_makes_the_next_turn_find_it_in_ram_but_report_disk(tmp_path):
    h = Harness(tmp_path)
    h.turn("s", [1, 2, 3])
    h.store.spill("s")
    h.settle()
    h.store.restore("s")
    h.settle()
    kv, source = h.store.acquire("s", 10)
    assert source == "disk" and kv.token_ids == [1, 2, 3]


def test_a_corrupt_file_means_recompute_not_an_error(tmp_path):
    h = Harness(tmp_path)
    h.turn("s", [1, 2, 3])
    h.store.spill("s")
    h.settle()
    [path] = h.disk.chunks_dir.iterdir()
    path.write_bytes(path.read_bytes()[:-10])
    assert h.turn("s", [1, 2, 3, 4]) == "miss"
    assert h.store.stats.recomputes == 1 and h.store.stats.restore_failures == {"truncated": 1}


def test_wanted_while_spilling_keeps_the_ram_copy(tmp_path):
    h = Harness(tmp_path)
    h.turn("s", [1, 2, 3])
    h.store.spill("s")
    assert h.store.acquire("s", 10) is None  # the write is in flight
    h.settle()
    kv, source = h.store.acquire("s", 10)
    assert source == "ram" and kv.token_ids == [1, 2, 3]
    assert h.disk.contains("s")  # a clean copy stays on disk


def test_drop_removes_every_tier(tmp_path):
    h = Harness(tmp_path)
    h.turn("s", [1, 2, 3])
    h.store.spill("s")
    h.settle()
    h.turn("t", [4])
    h.store.drop("s")
    h.store.drop("t")
    h.settle()
    assert h.store.tier_of("s") == "none" and h.store.tier_of("t") == "none"
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("*.json"))


def test_ttl_drops_idle_sessions_from_both_tiers(tmp_path):
    h = Harness(tmp_path, ttl_seconds=0.05)
    h.turn("disk", [1])
    h.store.spill("disk")
    h.settle()
    h.turn("ram", [2])
    time.sleep(0.1)
    h.store.expire()
    h.settle()
    assert h.store.tier_of("ram") == "none" and h.store.tier_of("disk") == "none"


def test_session_count_limit(tmp_path):
    h = Harness(tmp_path, max_ram_sessions=2)
    for key in "abc":
        h.turn(key, [1])
    h.settle()
    assert len(h.store.entries) == 2 and h.store.tier_of("a") == "disk"


def test_spill_all_writes_dirty_sessions_for_a_restart(tmp_path):
    h = Harness(tmp_path)
    h.turn("a", [1, 2])
    h.turn("b", [3])
    assert h.store.spill_all() == 2
    again = Harness(tmp_path)
    assert again.turn("a", [1, 2, 5]) == "disk"


class StoreMachine(RuleBasedStateMachine):
    """Random admit/touch/spill/restore/delete sequences never break a limit, at any moment."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        from pathlib import Path

        self.h = Harness(Path(self.tmp.name), max_ram_bytes=4 * BLOCK, max_ram_sessions=3, max_disk_bytes=6 * BLOCK)
        self.lengths: dict[str, int] = {}

    keys = st.sampled_from("abcdef")

    @rule(key=keys, n=st.integers(1, 600))
    def turn(self, key, n):
        got = self.h.store.acquire(key, n)
        self.check_limits()
        if got is None:
            self.h.settle()
            return
        kv, _ = got
        kv.truncate(0)
        kv.token_ids.extend(range(n))
        self.h.store.release(key)
        self.lengths[key] = n

    @rule(key=keys)
    def spill(self, key):
        self.h.store.spill(key)

    @rule(key=keys)
    def prefetch(self, key):
        self.h.store.restore(key)

    @rule(key=keys)
    def drop(self, key):
        self.h.store.drop(key)

    @rule()
    def settle(self):
        self.h.settle()

    @invariant()
    def check_limits(self):
        store, cfg = self.h.store, self.h.store.config
        assert store.ram_bytes <= cfg.max_ram_bytes
        assert len(store.entries) <= cfg.max_ram_sessions
        assert self.h.disk.total_bytes <= self.h.disk.max_bytes
        # the accounting is true: tensors actually held never exceed what is counted
        held = sum(e.kv.data.numel() * 4 for e in store.entries.values())
        assert held <= store.ram_bytes

    def teardown(self):
        self.h.settle()
        self.tmp.cleanup()


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)


def test_spare_capacity_reserved_for_an_answer_is_given_back_when_the_turn_ends(tmp_path):
    h = Harness(tmp_path, max_ram_bytes=4 * BLOCK)
    h.turn("a", [1, 2, 3])
    kv, _ = h.store.acquire("a", 600)  # a turn reserving room for a long answer: 3 blocks
    assert h.store.ram_bytes == 3 * BLOCK
    kv.token_ids.extend([4, 5])  # ... that turned out short
    h.store.release("a")
    assert h.store.ram_bytes == BLOCK
    for key in "bcd":
        h.turn(key, [7])
    h.settle()
    assert [h.store.tier_of(k) for k in "abcd"] == ["ram"] * 4 and h.store.stats.spills == 0
    assert h.store.entries["a"].kv.token_ids == [1, 2, 3, 4, 5]


def _run(kv: SessionKV, tokens: list[int]) -> None:
    """Append tokens as a forward pass would (KV values derived from the token ids)."""
    kv.ensure_capacity(len(tokens))
    start = kv.length
    for pos in range(start, len(tokens)):
        value = torch.full((1, 1, 4), float(tokens[pos]))
        for layer in range(2):
            kv.write(layer, pos, value, -value)
        kv.token_ids.append(tokens[pos])


def test_a_common_prefix_is_held_once_and_freed_with_its_last_reader(tmp_path):
    h = Harness(tmp_path, max_ram_bytes=1 << 30)
    store = h.store
    system = list(range(1000, 1300))  # 300 tokens both sessions start with
    a_kv, _ = store.acquire("a", 310)
    _run(a_kv, system + [1, 2, 3])
    store.release("a")
    before = store.ram_bytes
    assert PrefixSharing(store).share_prefix("b", system + [7, 8]) == 300
    b_kv, source = store.acquire("b", 310)
    assert source == "ram" and b_kv.prefix is a_kv.prefix and store.budget.num_shared == 1
    _run(b_kv, system + [7, 8])
    store.release("b")
    # the 300 shared tokens are held and counted once (two private copies would be 2 x before): the
    # shared prefix is a's buffer as it was (nothing copied), a reads it and keeps only its tail
    assert 300 * b_kv.token_bytes <= store.budget.shared_bytes <= before
    assert store.ram_bytes == store.budget.shared_bytes + a_kv.nbytes + b_kv.nbytes < 2 * before
    assert torch.equal(b_kv.view(1, 302)[0], a_kv.view(1, 300)[0].new_tensor(
        [[float(t)] * 4 for t in system + [7, 8]])[None])
    # spilling a reader writes its whole conversation; it restores as a private KV
    store.spill("b")
    h.settle()
    got = store.acquire("b", 302)
    while got is None:
        h.settle()
        got = store.acquire("b", 302)
    restored, source = got
    assert source == "disk" and restored.prefix is None and restored.token_ids == system + [7, 8]
    assert torch.equal(restored.view(0, 302)[1], -restored.view(0, 302)[0])
    store.release("b")
    store.drop("a")
    store.drop("b")
    h.settle()
    assert store.budget.num_shared == 0 and store.budget.shared_bytes == 0


def test_no_sharing_for_short_or_own_prefixes(tmp_path):
    store = Harness(tmp_path).store
    kv, _ = store.acquire("a", 100)
    _run(kv, list(range(100)))
    store.release("a")
    assert PrefixSharing(store).share_prefix("b", list(range(15)) + [999]) == 0  # below MIN_SHARED_TOKENS
    assert PrefixSharing(store).share_prefix("c", list(range(16)) + [999]) == 16
    assert PrefixSharing(store).share_prefix("a", list(range(100)) + [5]) == 0  # its own KV already covers it


def test_a_prefix_on_disk_is_read_back_and_shared(tmp_path):
    h = Harness(tmp_path)
    store = h.store
    system = list(range(500, 700))
    kv, _ = store.acquire("a", 205)
    _run(kv, system + [1])
    store.release("a")
    store.spill("a")
    h.settle()
    assert store.tier_of("a") == "disk"
    assert PrefixSharing(store).share_prefix("b", system + [2, 3]) is None  # a is being read back for b
    h.settle()
    assert PrefixSharing(store).share_prefix("b", system + [2, 3]) == 200
    b_kv, _ = store.acquire("b", 203)
    assert b_kv.prefix is store.entries["a"].kv.prefix and b_kv.token_ids == system
    assert torch.equal(b_kv.view(0, 200)[0][0, :, 0], torch.tensor(system, dtype=torch.float32))


def test_write_through_writes_each_turn_behind_it_and_keeps_the_kv_in_ram(tmp_path):
    h = Harness(tmp_path, write_through=True)
    h.turn("s", list(range(300)))  # released: its KV is being written, and stays in RAM
    assert h.store.acquire("s", 700) is None  # the next turn waits for the write in flight
    h.settle()
    assert h.disk.contains("s") and h.store.tier_of("s") == "ram" and h.store.stats.writes_behind == 1
    assert h.turn("s", list(range(600))) == "ram"
    h.settle()
    assert h.store.stats.writes_behind == 2 and h.disk.stats.chunks_reused == 1  # positions 0-255 were on disk
    kv, _ = h.disk.read_into("s", lambda n: torch.empty(2, 2, 1, n, 4))
    assert kv.shape[3] == 600 and torch.equal(kv, h.store.entries["s"].kv.data[:, :, :, :600])


def test_a_failed_write_behind_keeps_the_kv_in_ram(tmp_path, monkeypatch):
    h = Harness(tmp_path, write_through=True)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(h.disk, "write", full)
    h.turn("s", [1, 2, 3])
    h.settle()
    assert h.store.tier_of("s") == "ram" and h.store.entries["s"].is_dirty
    assert h.turn("s", [1, 2, 3, 4]) == "ram"
