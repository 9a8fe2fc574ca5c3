"""One step of the engine: schedule -> run -> postprocess. Engine thread only.

schedule: the scheduler picks the turns and tokens of this forward pass, attaching each starting turn
to its session's KV (keeping the longest prefix it already holds, and the branch the prompt leaves);
run: one packed forward pass; postprocess: sample each turn's next token, stream it, end turns that
stop. A turn whose whole prompt is cached with the logits after it (a new answer to the same question)
samples its first token from those logits, without a forward pass. A failing forward pass
fails the turns it carried, never the engine.
"""

from __future__ import annotations

import logging
import time

import torch

from engine.admission import Admission
from engine.config import EngineConfig
from engine.errors import EngineStopped
from engine.kv import Branches, KVStore, PrefixSharing, common_prefix_length
from engine.model import ChatFormat, ForwardItem, ModelRunner
from engine.sampling import sample_rows
from engine.scheduler import Scheduler
from engine.stats import EngineStats
from engine.turn import DoneEvent, ErrorEvent, Timings, TokenEvent, Turn, Usage

log = logging.getLogger(__name__)


class Stepper:
    def __init__(self, runner: ModelRunner, chat_format: ChatFormat, config: EngineConfig, store: KVStore,
                 scheduler: Scheduler, admission: Admission, stats: EngineStats, max_context: int):
        self.runner, self.chat_format, self.config = runner, chat_format, config
        self.store, self.scheduler, self.admission, self.stats = store, scheduler, admission, stats
        self.sharing = PrefixSharing(store)
        self.branches = Branches(store)
        self.max_context = max_context
        self.finished_since_schedule = False  # a finished turn may have unblocked a waiting one

    def step(self) -> None:
        for turn in [t for t in list(self.scheduler.waiting) + self.scheduler.running if t.is_cancelled]:
            self.finish(turn, reason="cancelled")
        plan = self.scheduler.schedule(self._start)
        self.finished_since_schedule = False
        ready = [turn for turn, tokens in plan if not tokens]  # first token from logits kept with the KV
        plan = [(turn, tokens) for turn, tokens in plan if tokens]
        sampled, rows = list(ready), [turn.ready_logits for turn in ready]
        if plan:
            items = [ForwardItem(t.kv, tokens, needs_logits=not t.num_prompt_remaining or len(tokens) == t.num_prompt_remaining)
                     for t, tokens in plan]
            started = time.perf_counter()
            try:
                logits = self.runner.forward(items)
            except Exception as exc:  # noqa: BLE001 - one bad step must not kill the server
                log.exception("forward pass failed")
                for turn, _ in plan:
                    self.finish(turn, error=exc)
                return
            self._count_step(plan, started)
            computed = [turn for (turn, _), item in zip(plan, items) if item.needs_logits]
            for turn, row in zip(computed, logits):
                if not turn.output_ids:  # the prompt's last position: kept with the KV for a new answer
                    turn.kv.last_logits = (len(turn.prompt_ids), row.clone())
            sampled += computed
            rows += list(logits)
        if not sampled:
            return
        tokens = sample_rows(torch.stack(rows), [t.request.sampling for t in sampled], [t.generator for t in sampled])
        for turn, token in zip(sampled, tokens):
            self._postprocess(turn, token)

    def fail_all(self, error: Exception) -> None:
        """A bug escaped a step: the turns at hand end with it (running) or EngineStopped (waiting)."""
        for turn in list(self.scheduler.running):
            self.finish(turn, error=error)

    def stop_all(self) -> None:
        for turn in list(self.scheduler.waiting) + list(self.scheduler.running):
            self.finish(turn, error=EngineStopped("the server is shutting down"))

    def _count_step(self, plan: list, started: float) -> None:
        st = self.stats
        st.num_steps += 1
        num_decode = sum(1 for t, tokens in plan if t.output_ids and len(tokens) == 1)
        st.decode_batch.add(num_decode)
        st.prefill_batch.add(len(plan) - num_decode)
        st.step_tokens.add(sum(len(tokens) for _, tokens in plan))
        ms = (time.perf_counter() - started) * 1000
        st.step_ms.add(ms)
        num_decode_rows = sum(1 for _, tokens in plan if len(tokens) == 1)
        self.admission.observe_step(num_decode_rows, sum(len(t) for _, t in plan if len(t) > 1), ms)
        for turn, tokens in plan:
            if turn.ticket is not None and turn.ticket.prompt_left:
                self.admission.prefilled(turn.ticket, len(tokens))

    def _start(self, turn: Turn) -> bool:
        """Attach the session's KV, keeping the longest prefix shared with the new prompt.
        False: not ready (KV being restored from disk, or RAM being freed); try again later."""
        store, reuse = self.store, self.config.reuse_kv
        if store.is_in_use(turn.session_id):
            return False  # another turn of this session is running on its KV: this one starts after it
        if turn.t_start == 0.0:
            turn.t_start = time.perf_counter()
            prefix = turn.request.adopt_prefix
            if prefix and reuse:
                self.sharing.adopt(turn.session_id, turn.prompt_ids, lambda session_id: session_id.startswith(prefix))
        if reuse and not turn.branch_ready:
            # the session comes back to a kept branch, or leaves the one its KV holds (engine/kv/branches.py)
            req = turn.request
            ready, turn.kv_branch = self.branches.prepare(turn.session_id, turn.prompt_ids, turn.kv_branch, req.branch,
                                                          req.new_branch)
            if not ready:
                return False
            turn.branch_ready = True
        if reuse and not turn.prefix_checked:
            # another session may hold this prompt's beginning (a system prompt), maybe on disk
            if self.sharing.share_prefix(turn.session_id, turn.prompt_ids) is None:
                return False  # that session's KV is being read back; the turn keeps its place
            turn.prefix_checked = True
        acquired = store.acquire(turn.session_id, len(turn.prompt_ids) + turn.request.sampling.max_tokens)
        if acquired is None:
            return False
        kv, source = acquired
        # at least one prompt token must be fed to get logits for the first answer token, unless the KV
        # kept the logits after the whole prompt
        n = len(turn.prompt_ids)
        keep = min(common_prefix_length(kv.token_ids, turn.prompt_ids), n) if reuse else 0
        if keep == n and kv.logits_after(n) is not None:
            turn.ready_logits = kv.logits_after(n)
        keep = min(keep, n - 1) if turn.ready_logits is None else keep
        kv.truncate(keep)
        turn.kv, turn.num_cached_tokens = kv, keep
        if turn.ticket is not None:
            self.admission.started(turn.ticket, len(turn.prompt_ids) - keep)
        self.stats.queue_wait_ms.add((time.perf_counter() - turn.t_submit) * 1000)
        turn.cache_source = source if keep else "miss"
        store.stats.tokens_reused += keep
        turn.generator = turn.request.sampling.new_generator()
        return True

    def _postprocess(self, turn: Turn, token: int) -> None:
        turn.output_ids.append(token)
        now = time.perf_counter()
        if not turn.t_first_token:
            turn.t_first_token = now
            self.stats.ttft_ms.add((now - turn.t_submit) * 1000)
        else:
            self.stats.itl_ms.add((now - turn.t_last_token) * 1000)
        turn.t_last_token = now
        if token in self.chat_format.stop_token_ids:
            self.finish(turn, reason="stop")
            return
        turn.emit(TokenEvent(turn.detokenizer.push(token), token))
        full = turn.kv.length + 1 >= self.max_context
        if len(turn.output_ids) >= turn.request.sampling.max_tokens or full:
            self.finish(turn, reason="length")

    def finish(self, turn: Turn, reason: str = "", error: Exception | None = None) -> None:
        self.scheduler.remove(turn)
        self.finished_since_schedule = True
        if turn.is_started:
            # the KV stays valid even after a failed pass: the runner extends token_ids only on success
            self.store.release(turn.session_id)
        if turn.ticket is not None:
            self.admission.release(turn.ticket, None if error is not None else len(turn.output_ids))
        if error is not None:
            code = getattr(error, "code", "internal_error")
            self.stats.count_finish(code)
            turn.emit(ErrorEvent(code, str(error) or type(error).__name__))
            return
        self.stats.count_finish(reason)
        self.stats.prompt_tokens += len(turn.prompt_ids)
        self.stats.cached_tokens += turn.num_cached_tokens
        self.stats.generated_tokens += len(turn.output_ids)
        tail = turn.detokenizer.flush()
        if tail:
            turn.emit(TokenEvent(tail, -1))
        now = time.perf_counter()
        first = turn.t_first_token or now
        text = self.chat_format.tokenizer.decode(turn.output_ids, skip_special_tokens=True,
                                                 clean_up_tokenization_spaces=False)
        turn.emit(DoneEvent(
            finish_reason=reason,
            text=text,
            output_ids=list(turn.output_ids),
            usage=Usage(len(turn.prompt_ids), len(turn.output_ids), turn.num_cached_tokens),
            timings=Timings(ttft_ms=(first - turn.t_submit) * 1000, prefill_ms=(first - (turn.t_start or first)) * 1000,
                            decode_ms=(now - first) * 1000),
            cache=turn.cache_source,
        ))
