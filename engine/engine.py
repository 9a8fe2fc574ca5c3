"""The engine: one thread that owns the model and all KV, running schedule -> run -> postprocess.

Callers on the event loop use `submit()` (thread-safe, never blocks) and read a TurnStream;
everything else happens on the engine thread. Bad input must be refused before submit():
the engine only asserts its invariants.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import asdict

from engine.model.chat_format import ChatFormat
from engine.config import EngineConfig
from engine.model.detokenizer import IncrementalDetokenizer
from engine.kv.disk_tier import DiskTier
from engine.errors import EngineStopped, Overloaded
from engine.kv.session_kv import common_prefix_length
from engine.kv.store import KVStore
from engine.model.runner import ForwardItem, ModelRunner
from engine.sampling import sample_rows
from engine.scheduler import Scheduler
from engine.stats import EngineStats
from engine.stream import TurnStream
from engine.turn import DoneEvent, ErrorEvent, Timings, TokenEvent, Turn, TurnRequest, Usage

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runner: ModelRunner, chat_format: ChatFormat, config: EngineConfig, disk: DiskTier | None = None):
        self.runner = runner
        self.chat_format = chat_format
        self.config = config
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("turn", Turn) | ("cancel", id) | ("run", fn) | ("call", fn, args, fut)
        self.store = KVStore(config.kv, runner.new_kv, disk, notify=lambda fn: self._inbox.put(("run", fn)))
        self.scheduler = Scheduler(config)
        self._num_admitted = 0  # turns submitted and not finished; guarded by _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = EngineStats()
        self.heartbeat = time.monotonic()  # last time the loop went round (idle loops wake every 0.5 s)
        self._finished_since_schedule = False

    # ---- event-loop side (thread-safe) ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._inbox.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    def admit(self) -> TurnStream:
        """Reserve a place for one turn; raises Overloaded at once when max_queue turns are unfinished.

        The caller must then either `stream.start(request)` or `stream.abandon()`.
        """
        if self._stopping:
            raise EngineStopped("the server is shutting down")
        with self._lock:
            if self._num_admitted >= self.config.max_queue:
                raise Overloaded(f"{self._num_admitted} turns in progress; retry shortly")
            self._num_admitted += 1
        return TurnStream(asyncio.get_running_loop(), self._enqueue, self._cancel, self._release_slot)

    def submit(self, request: TurnRequest) -> TurnStream:
        """admit() + start(): queue a turn and return its event stream."""
        stream = self.admit()
        stream.start(request)
        return stream

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_admitted(self) -> int:
        return self._num_admitted

    def _enqueue(self, stream: TurnStream, request: TurnRequest) -> int:
        turn = Turn(request, stream.push, IncrementalDetokenizer(self.chat_format.tokenizer))
        self._inbox.put(("turn", turn))
        return turn.id

    def _release_slot(self) -> None:
        with self._lock:
            self._num_admitted -= 1

    def stats_snapshot(self, with_buckets: bool = False) -> dict:
        """Engine and KV store statistics. Run it on the engine thread: `await engine.call(engine.stats_snapshot)`.
        with_buckets: include histogram buckets (not JSON-safe: the last bound is inf)."""
        store, disk = self.store, self.store.disk
        cfg = self.config.kv
        return {
            "engine": {**self.stats.snapshot(with_buckets), "queue_depth": len(self.scheduler.waiting),
                       "running": len(self.scheduler.running), "admitted": self._num_admitted,
                       "weights": self.runner.weights_summary()},
            "kv": {
                "ram": {"sessions": store.num_ram_sessions, "bytes": store.ram_bytes,
                        "shared_prefixes": store.num_shared, "shared_bytes": store.shared_bytes,
                        "max_bytes": cfg.max_ram_bytes, "max_sessions": cfg.max_ram_sessions},
                "disk": {"sessions": disk.num_files if disk else 0, "bytes": disk.total_bytes if disk else 0,
                         "max_bytes": cfg.max_disk_bytes},
                **asdict(store.stats),
                "files": asdict(disk.stats) if disk else {},
            },
        }

    async def call(self, fn, *args):
        """Run fn(*args) on the engine thread between steps (for store operations); await its result."""
        fut = asyncio.get_running_loop().create_future()
        self._inbox.put(("call", fn, args, fut))
        return await fut

    def _cancel(self, turn_id: int) -> None:
        self._inbox.put(("cancel", turn_id))

    def prefetch(self, session_key: str) -> None:
        """A client is back: start reading its KV from disk now, before its next turn. Thread-safe."""
        if not self.config.reuse_kv:
            return  # the baseline mode would throw it away
        self._inbox.put(("run", lambda: self.store.prefetch(session_key)))

    def spill(self, session_key: str, cause: str = "admin") -> None:
        """Move a session's KV to disk and free its RAM (after its running turn, if any). Thread-safe."""
        self._inbox.put(("run", lambda: self.store.spill(session_key, cause)))

    def drop(self, session_key: str) -> None:
        """Forget a session's KV in every tier. Thread-safe."""
        self._inbox.put(("run", lambda: self.store.drop(session_key)))

    # ---- engine thread ----

    def _loop(self) -> None:
        next_expiry = 0.0
        while not self._stopping:
            self.heartbeat = time.monotonic()
            # block only when nothing can run: waiting turns are then blocked on a restore or on
            # RAM, and a completion from the KV store's I/O thread wakes us through the inbox
            try:
                # (a turn that just finished may have unblocked a waiting one: look again before sleeping)
                recheck = self._finished_since_schedule and self.scheduler.waiting
                self._finished_since_schedule = False
                self._drain_inbox(block=not self.scheduler.running and not recheck)
                self._wait_for_company()
                if self.scheduler.num_unfinished:
                    self.step()
            except Exception as exc:  # noqa: BLE001 - a bug must fail the turns at hand, not the server
                log.exception("engine step failed")
                for turn in list(self.scheduler.running):
                    self._finish(turn, error=exc)
            if time.monotonic() > next_expiry:
                self.store.expire()
                next_expiry = time.monotonic() + 30.0
        for turn in list(self.scheduler.waiting) + list(self.scheduler.running):
            self._finish(turn, error=EngineStopped("the server is shutting down"))
        written = self.store.spill_all()
        log.info("engine stopped; %d sessions written to disk", written)

    def _wait_for_company(self) -> None:
        """An idle engine holds a new turn up to max_wait_ms so that turns arriving together share
        their prefill pass; a lone turn never waits longer than that."""
        sched = self.scheduler
        deadline = (sched.waiting[0].t_submit + self.config.max_wait_ms / 1000) if sched.waiting else 0.0
        while (not sched.running and 0 < len(sched.waiting) < self.config.max_batch_size
               and (remaining := deadline - time.perf_counter()) > 0):
            self._drain_inbox(block=True, timeout=remaining)

    def _drain_inbox(self, block: bool, timeout: float = 0.5) -> None:
        try:
            msg = self._inbox.get(timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(msg)
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "turn":
            self.scheduler.add(msg[1])
        elif kind == "cancel":
            for turn in list(self.scheduler.waiting) + self.scheduler.running:
                if turn.id == msg[1]:
                    turn.is_cancelled = True
        elif kind == "run":
            try:
                msg[1]()
            except Exception:  # noqa: BLE001 - store bookkeeping must not stop the engine
                log.exception("engine task failed")
        elif kind == "call":
            _, fn, args, fut = msg
            try:
                result, error = fn(*args), None
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                result, error = None, exc
            loop = fut.get_loop()
            loop.call_soon_threadsafe(_resolve, fut, result, error)

    def step(self) -> None:
        for turn in [t for t in list(self.scheduler.waiting) + self.scheduler.running if t.is_cancelled]:
            self._finish(turn, reason="cancelled")
        plan = self.scheduler.schedule(self._start)
        if not plan:
            return
        items = [ForwardItem(t.kv, tokens, needs_logits=not t.num_prompt_remaining or len(tokens) == t.num_prompt_remaining)
                 for t, tokens in plan]
        started = time.perf_counter()
        try:
            logits = self.runner.forward(items)
        except Exception as exc:  # noqa: BLE001 - one bad step must not kill the server
            log.exception("forward pass failed")
            for turn, _ in plan:
                self._finish(turn, error=exc)
            return
        self._count_step(plan, started)
        sampled = [turn for (turn, _), item in zip(plan, items) if item.needs_logits]
        tokens = sample_rows(logits, [t.request.sampling for t in sampled], [t.generator for t in sampled])
        for turn, token in zip(sampled, tokens):
            self._postprocess(turn, token)

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
        self.scheduler.cost.observe(num_decode_rows, sum(len(t) for _, t in plan if len(t) > 1), ms)

    def _start(self, turn: Turn) -> bool:
        """Attach the session's KV, keeping the longest prefix shared with the new prompt.
        False: not ready (KV being restored from disk, or RAM being freed); try again later."""
        if self.store.is_in_use(turn.session_key):
            return False  # another turn of this session is running on its KV: this one starts after it
        if turn.t_start == 0.0:
            turn.t_start = time.perf_counter()
            prefix = turn.request.adopt_prefix
            if prefix and self.config.reuse_kv:
                self.store.adopt(turn.session_key, turn.prompt_ids, lambda key: key.startswith(prefix))
        if self.config.reuse_kv and not turn.prefix_checked:
            # another session may hold this prompt's beginning (a system prompt), maybe on disk
            if self.store.share_prefix(turn.session_key, turn.prompt_ids) is None:
                return False  # that session's KV is being read back; the turn keeps its place
            turn.prefix_checked = True
        acquired = self.store.acquire(turn.session_key, len(turn.prompt_ids) + turn.request.sampling.max_tokens)
        if acquired is None:
            return False
        kv, source = acquired
        # at least one prompt token must be fed to get logits for the first answer token
        keep = min(common_prefix_length(kv.token_ids, turn.prompt_ids), len(turn.prompt_ids) - 1)
        if not self.config.reuse_kv:
            keep = 0
        kv.truncate(keep)
        turn.kv, turn.num_cached_tokens = kv, keep
        self.stats.queue_wait_ms.add((time.perf_counter() - turn.t_submit) * 1000)
        turn.cache_source = source if keep else "miss"
        self.store.stats.tokens_reused += keep
        turn.generator = turn.request.sampling.new_generator()
        return True

    def _postprocess(self, turn: Turn, token: int) -> None:
        params = turn.request.sampling
        turn.output_ids.append(token)
        now = time.perf_counter()
        if not turn.t_first_token:
            turn.t_first_token = now
            self.stats.ttft_ms.add((now - turn.t_submit) * 1000)
        else:
            self.stats.itl_ms.add((now - turn.t_last_token) * 1000)
        turn.t_last_token = now
        if token in self.chat_format.stop_token_ids:
            self._finish(turn, reason="stop")
            return
        turn.emit(TokenEvent(turn.detokenizer.push(token), token))
        full = turn.kv.length + 1 >= min(self.config.max_context, self.runner.max_context)
        if len(turn.output_ids) >= params.max_tokens or full:
            self._finish(turn, reason="length")

    def _finish(self, turn: Turn, reason: str = "", error: Exception | None = None) -> None:
        self.scheduler.remove(turn)
        self._finished_since_schedule = True
        if turn.is_started:
            # the KV stays valid even after a failed pass: the runner extends token_ids only on success
            self.store.release(turn.session_key)
        self._release_slot()
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
        turn.emit(DoneEvent(
            finish_reason=reason,
            text=_decode(self.chat_format, turn.output_ids),
            output_ids=list(turn.output_ids),
            usage=Usage(len(turn.prompt_ids), len(turn.output_ids), turn.num_cached_tokens),
            timings=Timings(
                ttft_ms=(first - turn.t_submit) * 1000,
                prefill_ms=(first - (turn.t_start or first)) * 1000,
                decode_ms=(now - first) * 1000,
            ),
            cache=turn.cache_source,
        ))


def _decode(chat_format: ChatFormat, ids: list[int]) -> str:
    return chat_format.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _resolve(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
