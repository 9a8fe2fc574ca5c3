"""The packed multi-session forward pass computes what the Hugging Face model computes."""

import torch

from engine.kv.session_kv import common_prefix_length
from engine.model.runner import ForwardItem, ModelRunner


def _hf_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def test_prefill_in_chunks_matches_full_forward(tiny_model):
    runner = ModelRunner(tiny_model.model)
    ids = list(range(100, 180))
    expected = _hf_logits(tiny_model.model, ids)
    kv = runner.new_kv()
    for start in range(0, 80, 25):
        logits = runner.forward([ForwardItem(kv, ids[start:start + 25], True)])
        end = min(start + 25, 80)
        torch.testing.assert_close(logits[0], expected[end - 1], atol=1e-4, rtol=1e-4)
    assert kv.token_ids == ids


def test_sequences_with_different_cached_lengths_share_one_pass(tiny_model):
    runner = ModelRunner(tiny_model.model)
    convs = [list(range(10, 50)), list(range(300, 307)), list(range(900, 1000))]
    expected = [_hf_logits(tiny_model.model, c)[-1] for c in convs]
    kvs = [runner.new_kv() for _ in convs]
    # cache different prefixes first, then feed the rest of all three in one forward pass
    cut = [30, 0, 95]
    runner.forward([ForwardItem(kv, c[:k], False) for kv, c, k in zip(kvs, convs, cut) if k])
    logits = runner.forward([ForwardItem(kv, c[k:], True) for kv, c, k in zip(kvs, convs, cut)])
    for got, want in zip(logits, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_only_requested_rows_get_logits(tiny_model):
    runner = ModelRunner(tiny_model.model)
    a, b = runner.new_kv(), runner.new_kv()
    logits = runner.forward([ForwardItem(a, [5, 6, 7], False), ForwardItem(b, [8, 9], True)])
    assert logits.shape == (1, tiny_model.model.config.vocab_size)


def test_kv_grows_and_truncates_without_losing_prefix(tiny_model):
    runner = ModelRunner(tiny_model.model)
    kv = runner.new_kv()
    ids = [7] * 300  # crosses the 256-token capacity step
    runner.forward([ForwardItem(kv, ids[:200], False)])
    before = kv.data[:, :, :, :200].clone()
    runner.forward([ForwardItem(kv, ids[200:], False)])
    assert kv.capacity >= 300
    torch.testing.assert_close(kv.data[:, :, :, :200], before, atol=0, rtol=0)
    kv.truncate(120)
    assert kv.length == 120


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_the_rotary_table_grows_with_the_positions_and_is_computed_per_step_past_its_cap(tiny_model, monkeypatch):
    """The precomputed cos/sin table covers the first positions and doubles when a step reaches past it, up to
    a cap; a step past the cap computes its own rows. Either way the logits are those of a full table."""
    import engine.model.runner as runner_module

    full, short = ModelRunner(tiny_model.model), ModelRunner(tiny_model.model)
    short._rotary_table = {kind: tuple(t[:8] for t in table) for kind, table in short._rotary_table.items()}
    prompt = list(range(3, 23))  # positions 0..19, past the short table's 8
    logits = [r.forward([ForwardItem(r.new_kv(), prompt, True)]) for r in (full, short)]
    assert torch.equal(logits[0], logits[1])
    assert all(t[0].shape[0] == 32 for t in short._rotary_table.values())  # grown to a power of two past 19
    monkeypatch.setattr(runner_module, "_MAX_TABLE_POSITIONS", 8)
    capped = ModelRunner(tiny_model.model)
    assert all(t[0].shape[0] == 8 for t in capped._rotary_table.values())
    torch.testing.assert_close(capped.forward([ForwardItem(capped.new_kv(), prompt, True)]), logits[0])
    assert all(t[0].shape[0] == 8 for t in capped._rotary_table.values())  # not grown past the cap
