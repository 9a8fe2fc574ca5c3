"""The step-time model that sizes prefill chunks while turns stream."""

import torch

from engine.config import EngineConfig
from engine.model.detokenizer import IncrementalDetokenizer
from engine.kv.session_kv import SessionKV
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.step_cost import StepCostModel
from engine.turn import Turn, TurnRequest


def make_turn(n_prompt: int) -> Turn:
    return Turn(TurnRequest("s", list(range(n_prompt)), SamplingParams()), lambda e: None, IncrementalDetokenizer(None))


def start(turn: Turn) -> bool:
    turn.kv = SessionKV(1, 1, 4, dtype=torch.float32)
    return True


def test_learns_decode_and_prefill_costs_from_observed_steps():
    cost = StepCostModel()
    for _ in range(50):
        cost.observe(16, 0, 100.0)  # decode-only steps of 16 sequences: 100 ms
        cost.observe(16, 50, 200.0)  # + 50 prefill tokens: +100 ms -> 2 ms/token
        cost.observe(4, 0, 40.0)
    assert abs(cost.decode_ms(16) - 100.0) < 1
    assert abs(cost.ms_per_prefill_token - 2.0) < 0.05
    assert 55 < cost.decode_ms(8) < 65  # interpolated between 4 and 16
    assert cost.prefill_budget(16, 200.0) in range(49, 51)
    assert cost.prefill_budget(16, 90.0) == 0  # decoding alone already exceeds the target


def test_slower_machine_gives_smaller_chunks():
    fast, slow = StepCostModel(), StepCostModel()
    for _ in range(50):
        fast.observe(8, 0, 50.0)
        fast.observe(8, 64, 114.0)
        slow.observe(8, 0, 100.0)
        slow.observe(8, 64, 228.0)
    assert slow.prefill_budget(8, 200.0) < fast.prefill_budget(8, 200.0) / 2


def test_scheduler_sizes_prefill_by_the_model_while_decoding():
    cost = StepCostModel()
    for _ in range(50):
        cost.observe(1, 0, 50.0)
        cost.observe(1, 100, 250.0)  # 2 ms per prefill token
    sched = Scheduler(EngineConfig(target_step_ms=150.0, max_tokens_per_decode_step=1000), cost)
    streaming, long_prompt = make_turn(5), make_turn(1000)
    sched.add(streaming)
    for turn, tokens in sched.schedule(start):  # its whole prompt in one step
        turn.kv.token_ids.extend(tokens)
    streaming.output_ids.append(1)
    sched.add(long_prompt)
    plan = dict((t.id, tokens) for t, tokens in sched.schedule(start))
    assert len(plan[streaming.id]) == 1
    assert len(plan[long_prompt.id]) == 50  # (150 - 50) ms / 2 ms per token
