"""A turn: one request to extend a session's conversation, from admission to its last token."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from engine.admission import Ticket
from engine.kv import SessionKV
from engine.model import IncrementalDetokenizer
from engine.sampling import SamplingParams

_ids = itertools.count(1)


@dataclass(frozen=True)
class TurnRequest:
    session_id: str  # owner of the KV; one running turn per session at a time
    prompt_ids: list[int]  # whole conversation rendered with the chat template
    sampling: SamplingParams
    # stateless clients (OpenAI API): when session_id has no KV, the turn may take over the KV of an
    # idle session whose id starts with this prefix and whose tokens its prompt continues ("" = never)
    adopt_prefix: str = ""
    # branches of a conversation (engine/kv/branches.py), named by the caller ("": none): the branch the
    # session's KV holds, and the one this prompt starts from; new_branch: the prompt leaves that branch
    # part way (a new answer, an edited question) and what it leaves is kept
    kv_branch: str = ""
    branch: str = ""
    new_branch: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused instead of computed


@dataclass(frozen=True)
class Timings:
    ttft_ms: float  # submit -> first token
    prefill_ms: float  # first scheduled -> first token
    decode_ms: float  # first token -> end


@dataclass(frozen=True)
class TokenEvent:
    text: str  # may be "" while a multi-byte character is incomplete
    token_id: int


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str  # "stop" | "length" | "cancelled"
    text: str  # whole answer, special tokens removed
    output_ids: list[int]
    usage: Usage
    timings: Timings
    cache: str  # where the reused KV came from: "ram" | "disk" | "miss"


@dataclass(frozen=True)
class ErrorEvent:
    code: str
    message: str


TurnEvent = TokenEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class Turn:
    request: TurnRequest
    emit: Callable[[TurnEvent], None]  # thread-safe; called from the engine thread
    detokenizer: IncrementalDetokenizer
    ticket: Ticket | None = None  # its admitted place (engine/admission.py), released when it ends
    id: int = field(default_factory=lambda: next(_ids))
    generator: torch.Generator | None = None
    kv: SessionKV | None = None
    cache_source: str = "miss"
    num_cached_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    is_cancelled: bool = False
    prefix_checked: bool = False  # the KV store was asked for a shared prefix (engine/step.py _start)
    branch_ready: bool = False  # the session's KV holds the branch the prompt starts from (engine/step.py)
    kv_branch: str = ""  # the branch the session's KV holds, as the turn's start moves it
    ready_logits: torch.Tensor | None = None  # [vocab]: the whole prompt was cached with its logits
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    t_first_token: float = 0.0
    t_last_token: float = 0.0

    def __post_init__(self) -> None:
        self.kv_branch = self.request.kv_branch

    @property
    def session_id(self) -> str:
        return self.request.session_id

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.prompt_ids

    @property
    def is_started(self) -> bool:
        return self.kv is not None

    @property
    def num_prompt_remaining(self) -> int:
        """Prompt tokens whose KV is not computed yet (0 once decoding)."""
        if self.kv is None:
            return len(self.prompt_ids)
        return max(0, len(self.prompt_ids) - self.kv.length)

    def next_input(self, budget: int) -> list[int]:
        """Tokens to feed this step: a prefill chunk of at most `budget`, or the last sampled token; none
        when the first token is sampled from logits kept with the KV (no forward pass)."""
        assert self.kv is not None
        if self.ready_logits is not None and not self.output_ids:
            return []
        if self.num_prompt_remaining:
            start = self.kv.length
            return self.prompt_ids[start : start + min(budget, self.num_prompt_remaining)]
        return [self.output_ids[-1]]
