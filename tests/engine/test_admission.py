"""Admission by predicted wait, without a model: a turn is admitted while its predicted time to first
token stays under the bound, refused with a Retry-After beyond it, and places come back as turns end."""

import pytest

from engine.admission import Admission
from engine.config import EngineConfig
from engine.errors import Overloaded
from engine.step_cost import StepCostModel


def _prompt(n: int, seed: int) -> list[int]:
    """n token ids no other seed's prompt shares."""
    return [seed * 10_000 + i for i in range(n)]


def _admission(**config) -> Admission:
    cost = StepCostModel()
    for batch in (1, 4, 8):
        cost.observe(batch, 0, 10.0 + batch)  # ms per decode step of `batch` sequences
    cost.ms_per_prefill_token = 1.0
    return Admission(EngineConfig(**{"max_ttft_s": 1.0, "max_batch_size": 4, **config}), cost)


def test_an_idle_engine_predicts_the_prefill_alone():
    admission = _admission()
    assert admission.predicted_ttft_ms(300) == pytest.approx(300.0)


def test_the_wait_grows_with_the_work_ahead_until_turns_are_refused():
    admission = _admission()
    tickets, waits = [], []
    with pytest.raises(Overloaded) as refused:
        for i in range(100):
            waits.append(admission.predicted_ttft_ms(100))
            tickets.append(admission.admit(_prompt(100, i), max_tokens=16))
    admitted, refused_wait = waits[:-1], waits[-1]
    assert admitted == sorted(admitted) and admitted[-1] <= 1000 < refused_wait
    assert 2 <= len(tickets) < 100 and admission.num_admitted == len(tickets)
    assert refused.value.code == "overloaded" and refused.value.retry_after >= 1
    # prompts computed: the wait shrinks; turns ended: places come back
    for ticket in tickets:
        admission.prefilled(ticket, 100)
    assert admission.predicted_ttft_ms(100) < refused_wait
    for ticket in tickets:
        admission.release(ticket, num_generated=16)
    assert admission.num_admitted == 0 and admission.predicted_ttft_ms(100) == pytest.approx(100.0)


def test_short_answers_ahead_wait_less_than_long_ones():
    """Beyond a full batch, a turn waits for earlier turns to finish: for their expected answers."""
    short, long = _admission(max_ttft_s=1000.0), _admission(max_ttft_s=1000.0)
    for i in range(12):
        short.admit(_prompt(10, i), max_tokens=8)
        long.admit(_prompt(10, i), max_tokens=500)
    assert short.predicted_ttft_ms(10) < long.predicted_ttft_ms(10)


def test_a_place_given_back_twice_counts_once():
    admission = _admission()
    ticket = admission.admit(_prompt(10, 0), max_tokens=8)
    admission.release(ticket)
    admission.release(ticket)
    assert admission.num_admitted == 0


def test_max_queue_bounds_the_admitted_turns_whatever_the_prediction():
    admission = _admission(max_queue=3, max_ttft_s=1e9)
    for i in range(3):
        admission.admit(_prompt(1, i), max_tokens=1)
    with pytest.raises(Overloaded):
        admission.admit(_prompt(1, 3), max_tokens=1)


def test_a_prefix_a_recent_prompt_began_with_is_predicted_cached():
    """Turns sharing a system prompt, or a conversation's next turn, compute only what is new."""
    admission = _admission(max_ttft_s=1000.0)
    system = _prompt(320, 0)
    first = admission.admit(system + _prompt(20, 1), max_tokens=8)
    assert first.prompt_left == 340
    second = admission.admit(system + _prompt(20, 2), max_tokens=8)
    assert 20 <= second.prompt_left < 36  # the 320 shared tokens (20 whole blocks) are not counted
    admission.started(second, 300)  # the truth, once the turn starts (its KV turned out to be gone)
    assert second.prompt_left == 300
    with_work_ahead = admission.predicted_ttft_ms(100)
    admission.prefilled(second, 300)
    admission.prefilled(first, 340)
    assert first.prompt_left == second.prompt_left == 0
    idle_prefill = _admission(max_ttft_s=1000.0)  # two turns decoding, nothing left to prefill ahead
    for i in (5, 6):
        idle_prefill.started(idle_prefill.admit(_prompt(20, i), max_tokens=8), 0)
    assert admission.predicted_ttft_ms(100) == pytest.approx(idle_prefill.predicted_ttft_ms(100))
    assert admission.predicted_ttft_ms(100) < with_work_ahead
