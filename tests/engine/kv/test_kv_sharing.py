"""Sessions reading a shared prefix compute what they would compute with private KV."""

import torch

from engine.model.runner import ForwardItem, ModelRunner

SYSTEM = list(range(200, 290))  # the shared part (a "system prompt")


def _private_logits(runner, ids, then):
    kv = runner.new_kv()
    runner.forward([ForwardItem(kv, ids, False)])
    return [runner.forward([ForwardItem(kv, [t], True)])[0] for t in then]


def test_a_session_on_a_shared_prefix_decodes_like_a_private_one(tiny_model):
    runner = ModelRunner(tiny_model.model)
    a = runner.new_kv()
    runner.forward([ForwardItem(a, SYSTEM + [5, 6, 7], False)])
    shared = a.share(len(SYSTEM))
    assert shared.refs == 1 and a.prefix_len == len(SYSTEM) and a.token_ids[:len(SYSTEM)] == SYSTEM
    b = runner.new_kv()
    b.attach(shared, len(SYSTEM), capacity=len(SYSTEM) + 64)
    assert shared.refs == 2 and b.nbytes < a.nbytes + shared.nbytes
    # b prefills its own question after the shared part, then both decode in one step
    runner.forward([ForwardItem(b, [9, 10, 11, 12], False)])
    got = runner.forward([ForwardItem(a, [8], True), ForwardItem(b, [13], True)])
    want_a = _private_logits(runner, SYSTEM + [5, 6, 7], [8])[0]
    want_b = _private_logits(runner, SYSTEM + [9, 10, 11, 12], [13])[0]
    torch.testing.assert_close(got[0], want_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want_b, atol=1e-5, rtol=1e-5)


def test_partial_prefix_and_truncating_into_it(tiny_model):
    runner = ModelRunner(tiny_model.model)
    a = runner.new_kv()
    runner.forward([ForwardItem(a, SYSTEM, False)])
    shared = a.share(len(SYSTEM))
    b = runner.new_kv()
    b.attach(shared, 50, capacity=80)  # only the first 50 shared positions match b's prompt
    runner.forward([ForwardItem(b, [1, 2, 3], False)])
    want = _private_logits(runner, SYSTEM[:50] + [1, 2, 3], [4])[0]
    torch.testing.assert_close(runner.forward([ForwardItem(b, [4], True)])[0], want, atol=1e-5, rtol=1e-5)
    b.truncate(20)  # a new turn keeps less than the shared part: b owns a copy of it and lets go
    assert b.prefix is None and shared.refs == 1 and b.token_ids == SYSTEM[:20]
    want = _private_logits(runner, SYSTEM[:20], [4])[0]
    torch.testing.assert_close(runner.forward([ForwardItem(b, [4], True)])[0], want, atol=1e-5, rtol=1e-5)


def test_pieces_cover_the_whole_conversation(tiny_model):
    runner = ModelRunner(tiny_model.model)
    a = runner.new_kv()
    runner.forward([ForwardItem(a, SYSTEM + [1, 2], False)])
    before = a.positions(0, a.length).clone()
    a.share(40)
    assert torch.equal(torch.cat(a.pieces(), dim=3), before)
