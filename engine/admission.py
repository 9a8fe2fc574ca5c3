"""Admission by predicted wait: a turn is accepted while its predicted time to first token stays under
EngineConfig.max_ttft_s, and refused (Overloaded, with a Retry-After) beyond it.

A fixed queue length either turns away bursts the machine would serve in seconds or admits turns
that would wait minutes; the predicted wait follows the machine and the prompts. For a new turn whose
prompt has n tokens the KV store will not already hold (a prefix of a recently admitted prompt counts as
held: engine/prompt_prefixes.py), all times from the step-cost model, measured on this machine:
  * prefill: P = prompt tokens admitted and not yet computed, + n. With D turns decoding (D = the
    unfinished turns, at most a batch), each step gives prefill the scheduler's share B(D) beside
    the decoders, so P takes ceil(P / B) steps of decode_ms(D) + B * ms_per_prefill_token each;
  * batch slots: with max_batch_size turns or more unfinished, the turn also waits for earlier ones
    to end: each wave of max_batch_size turns takes about A full-batch decode steps, A being the mean
    expected answer of the unfinished turns (each min(its max_tokens, the mean answer length seen)).

Thread-safe: the event loop admits, the engine thread reports progress and step costs; one lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.errors import Overloaded
from engine.prompt_prefixes import PromptPrefixes
from engine.step_cost import StepCostModel

_ANSWER_ALPHA = 0.1  # weight of a finished turn in the mean answer length
_INITIAL_ANSWER_TOKENS = 128.0


@dataclass(eq=False)
class Ticket:
    """One admitted place. prompt_left: tokens of its prompt expected to be computed and not computed yet
    (the truth once the turn starts); answer: tokens its answer is expected to take (for the prediction)."""

    prompt_left: int
    answer: float
    is_released: bool = False


class Admission:
    def __init__(self, config: EngineConfig, cost: StepCostModel):
        self.config = config
        self.cost = cost  # written by the engine thread only through observe_step (under the lock)
        self._lock = threading.Lock()
        self._num_admitted = 0
        self._prompt_left = 0  # tokens: sum of the unfinished tickets' prompt_left
        self._answers = 0.0  # tokens: sum of the unfinished tickets' expected answers
        self._mean_answer = _INITIAL_ANSWER_TOKENS  # of finished turns (moving average)
        self.num_refused = {"predicted_wait": 0, "queue_full": 0}  # turns refused, by reason
        self._prefixes = PromptPrefixes()

    @property
    def num_admitted(self) -> int:
        return self._num_admitted

    def admit(self, prompt_ids: list[int], max_tokens: int) -> Ticket:
        """A place for a turn of this prompt and at most max_tokens answer tokens, or Overloaded (nothing
        is counted then)."""
        with self._lock:
            cfg = self.config
            num_prompt_tokens = max(1, len(prompt_ids) - self._prefixes.known_prefix(prompt_ids))
            if self._num_admitted >= cfg.max_queue:
                self.num_refused["queue_full"] += 1
                raise Overloaded(f"{self._num_admitted} turns in progress; retry shortly",
                                 retry_after=self._drain_seconds())
            wait_ms = self._predict_ms(num_prompt_tokens)
            if wait_ms > cfg.max_ttft_s * 1000:
                self.num_refused["predicted_wait"] += 1
                raise Overloaded(f"the predicted wait for a first token is {wait_ms / 1000:.0f} s (limit "
                                 f"{cfg.max_ttft_s:.0f} s); retry shortly",
                                 retry_after=max(1.0, (wait_ms - cfg.max_ttft_s * 1000) / 1000))
            self._prefixes.add(prompt_ids)
            ticket = Ticket(num_prompt_tokens, min(float(max_tokens), self._mean_answer))
            self._num_admitted += 1
            self._prompt_left += num_prompt_tokens
            self._answers += ticket.answer
            return ticket

    def predicted_ttft_ms(self, num_prompt_tokens: int) -> float:
        """The wait predicted now for a turn with num_prompt_tokens to compute."""
        with self._lock:
            return self._predict_ms(num_prompt_tokens)

    def started(self, ticket: Ticket, num_to_compute: int) -> None:
        """Engine thread: the turn started; num_to_compute of its prompt tokens are not cached."""
        with self._lock:
            self._prompt_left += num_to_compute - ticket.prompt_left
            ticket.prompt_left = num_to_compute

    def prefilled(self, ticket: Ticket, num_tokens: int) -> None:
        """Engine thread: num_tokens more of the ticket's prompt are computed (or reused from cache)."""
        with self._lock:
            done = min(num_tokens, ticket.prompt_left)
            ticket.prompt_left -= done
            self._prompt_left -= done

    def release(self, ticket: Ticket, num_generated: int | None = None) -> None:
        """The turn ended (num_generated: its answer length) or never started (None). Idempotent."""
        with self._lock:
            if ticket.is_released:
                return
            ticket.is_released = True
            self._num_admitted -= 1
            self._prompt_left -= ticket.prompt_left
            self._answers -= ticket.answer
            ticket.prompt_left = 0
            if num_generated is not None:
                self._mean_answer += _ANSWER_ALPHA * (num_generated - self._mean_answer)

    def observe_step(self, num_decode: int, num_prefill_tokens: int, ms: float) -> None:
        """Engine thread: one forward pass's measured cost (feeds the shared step-cost model)."""
        with self._lock:
            self.cost.observe(num_decode, num_prefill_tokens, ms)

    # ---- under the lock ----

    def _predict_ms(self, num_prompt_tokens: int) -> float:
        cfg, cost = self.config, self.cost
        pending = self._prompt_left + num_prompt_tokens
        decoding = min(self._num_admitted, cfg.max_batch_size)
        if decoding:
            share = min(cost.prefill_budget(decoding, cfg.target_step_ms), cfg.max_tokens_per_decode_step - decoding)
            share = max(share, cfg.min_prefill_tokens_per_step)
            step_ms = cost.decode_ms(decoding) + share * cost.ms_per_prefill_token
            prefill_ms = math.ceil(pending / share) * step_ms
        else:
            prefill_ms = pending * cost.ms_per_prefill_token
        waves = self._num_admitted // cfg.max_batch_size  # full batches ahead of this turn
        return prefill_ms + waves * self._mean_expected_answer() * cost.decode_ms(cfg.max_batch_size)

    def _mean_expected_answer(self) -> float:
        return self._answers / self._num_admitted if self._num_admitted else self._mean_answer

    def _drain_seconds(self) -> float:
        waves = math.ceil(self._num_admitted / self.config.max_batch_size)
        ms = waves * self._mean_expected_answer() * self.cost.decode_ms(self.config.max_batch_size)
        return max(1.0, ms / 1000)
