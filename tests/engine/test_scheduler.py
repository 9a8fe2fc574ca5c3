"""Scheduling rules, without a model: decode first, prefill in chunks within the token budget."""

from engine.config import EngineConfig
from engine.model.detokenizer import IncrementalDetokenizer
from engine.kv.session_kv import SessionKV
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.turn import Turn, TurnRequest


def _turn(n_prompt: int) -> Turn:
    return Turn(TurnRequest("s", list(range(n_prompt)), SamplingParams()), lambda e: None, IncrementalDetokenizer(None))


def _start(turn: Turn) -> bool:
    turn.kv = SessionKV(1, 1, 4, dtype=__import__("torch").float32)
    return True


def _run(plan):
    """Pretend the forward pass ran: the fed tokens are now cached; decoders sampled one token."""
    for turn, tokens in plan:
        turn.kv.token_ids.extend(tokens)
        if not turn.num_prompt_remaining:
            turn.output_ids.append(42)


def test_long_prompt_is_chunked_and_decoders_keep_running():
    sched = Scheduler(EngineConfig(max_tokens_per_step=1000, max_tokens_per_decode_step=64))
    short = _turn(10)
    sched.add(short)
    _run(sched.schedule(_start))  # short prefilled in one step
    long = _turn(200)
    sched.add(long)
    steps = 0
    while long.num_prompt_remaining:
        plan = sched.schedule(_start)
        assert plan[0][0] is short and len(plan[0][1]) == 1  # the decoder is served every step
        assert sum(len(t) for _, t in plan) <= 64
        _run(plan)
        steps += 1
    assert steps == 4  # 63 + 63 + 63 + 11 tokens


def test_batch_size_limit_leaves_turns_waiting():
    sched = Scheduler(EngineConfig(max_batch_size=2, max_tokens_per_step=1000))
    turns = [_turn(5) for _ in range(3)]
    for t in turns:
        sched.add(t)
    plan = sched.schedule(_start)
    assert [t for t, _ in plan] == turns[:2]
    assert list(sched.waiting) == [turns[2]]


def test_merged_prefill_of_several_new_turns():
    sched = Scheduler(EngineConfig(max_tokens_per_step=100))
    a, b = _turn(30), _turn(50)
    sched.add(a)
    sched.add(b)
    plan = sched.schedule(_start)
    assert [(t, len(x)) for t, x in plan] == [(a, 30), (b, 50)]


def test_a_turn_not_ready_keeps_its_place_and_others_go_ahead():
    sched = Scheduler(EngineConfig(max_tokens_per_step=100))
    restoring, ready = _turn(5), _turn(5)
    sched.add(restoring)
    sched.add(ready)
    plan = sched.schedule(lambda t: _start(t) if t is ready else False)
    assert [t for t, _ in plan] == [ready]
    assert list(sched.waiting) == [restoring]
    plan = sched.schedule(_start)
    assert [t for t, _ in plan] == [ready, restoring]
