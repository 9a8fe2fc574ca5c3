"""The engine: one thread that owns the model and all KV, stepping schedule -> run -> postprocess.

Other threads (the server's event loop) use only the thread-safe methods below: admit() a turn,
submit() it with an `emit` callback for its events, cancel() it, query() anything on the engine thread
through a concurrent.futures.Future, and prefetch/spill/drop a session's KV. Everything else runs on
the engine thread, between steps. Bad input must be refused before submit(): the engine only
asserts its invariants.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from engine.admission import Admission, Ticket
from engine.config import EngineConfig
from engine.errors import EngineStopped
from engine.kv import DiskTier, KVSpec, KVStore
from engine.model import ChatFormat, ForwardItem, IncrementalDetokenizer, ModelRunner
from engine.scheduler import Scheduler
from engine.stats import EngineStats, engine_snapshot
from engine.step import Stepper
from engine.step_cost import StepCostModel, calibrate
from engine.turn import Turn, TurnEvent, TurnRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

_IDLE_WAKE_S = 0.5  # an idle loop wakes this often (heartbeat, TTL expiry)
_EXPIRE_EVERY_S = 30.0
_STOP_MARGIN_S = 30.0  # beyond the shutdown spill: the step in progress and the writes in flight


class Engine:
    def __init__(self, runner: ModelRunner, chat_format: ChatFormat, config: EngineConfig, kv_spec: KVSpec,
                 max_context: int, disk: DiskTier | None = None):
        """Built by engine.start_engine(), which derives kv_spec and max_context from the model."""
        self.runner = runner
        self.chat_format = chat_format
        self.config = config
        self.kv_spec = kv_spec  # what this engine's KV looks like (a disk tier's files must match it)
        self.max_context = max_context  # tokens per session, prompt + answer
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # callables run on the engine thread
        cost = StepCostModel()
        self._admission = Admission(config, cost)
        self._store = KVStore(config.kv, runner.new_kv, disk, notify=self._inbox.put)
        self._scheduler = Scheduler(config, cost)
        self._stats = EngineStats()
        self._stepper = Stepper(runner, chat_format, config, self._store, self._scheduler, self._admission,
                                self._stats, max_context)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.heartbeat = time.monotonic()  # last time the loop went round (a float: safe to read anywhere)

    # ---- thread-safe ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fail the unfinished turns, write the sessions in RAM to disk (within shutdown_spill_seconds,
        after the step in progress), end the thread."""
        self._stopping = True
        self._inbox.put(lambda: None)
        if self._thread is not None:
            self._thread.join(self.config.kv.shutdown_spill_seconds + _STOP_MARGIN_S)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_admitted(self) -> int:
        return self._admission.num_admitted

    def admit(self, prompt_ids: list[int], max_tokens: int) -> Ticket:
        """A place for one turn, or Overloaded (its predicted wait is too long; nothing is counted).
        The ticket must then be passed to submit() or given back with release()."""
        if self._stopping:
            raise EngineStopped("the server is shutting down")
        return self._admission.admit(prompt_ids, max_tokens)

    def predicted_ttft_ms(self, num_prompt_tokens: int) -> float:
        """What admission predicts now for a turn of num_prompt_tokens (engine/admission.py)."""
        return self._admission.predicted_ttft_ms(num_prompt_tokens)

    def release(self, ticket: Ticket) -> None:
        """Give back an admitted place without running a turn."""
        self._admission.release(ticket)

    def submit(self, request: TurnRequest, ticket: Ticket, emit: Callable[[TurnEvent], None]) -> int:
        """Queue an admitted turn; returns its id. `emit` receives its events on the engine thread, ending
        with one DoneEvent or ErrorEvent; it must not block (hand the event over to another thread)."""
        turn = Turn(request, emit, IncrementalDetokenizer(self.chat_format.tokenizer), ticket)
        self._inbox.put(lambda: self._scheduler.add(turn))
        return turn.id

    def cancel(self, turn_id: int) -> None:
        """Stop a turn at its next step; its DoneEvent says "cancelled" (unknown or ended ids: nothing)."""
        self._inbox.put(lambda: self._cancel(turn_id))

    def query(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run fn(engine) on the engine thread between steps; the future holds its result or exception.
        fn may read anything (stats, the KV store) but must be quick: the step loop waits for it."""
        future: Future[T] = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self))
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

        self._inbox.put(run)
        return future

    def prefetch(self, session_id: str) -> None:
        """A client is back: start reading its KV from disk now, before its next turn."""
        if self.config.reuse_kv:  # the baseline mode would throw it away
            self._inbox.put(lambda: self._store.restore(session_id))

    def spill(self, session_id: str, cause: str = "admin") -> Future[str]:
        """Move a session's KV to disk and free its RAM (after its running turn, if any). The future
        holds the session's tier ("disk", or "none" without a disk tier) once that is done."""
        return self._on_store(lambda done: self._store.spill(session_id, cause, done))

    def drop(self, session_id: str) -> Future[str]:
        """Forget a session's KV and every branch kept for it, in every tier; the future holds "none" once
        the session's own is gone."""
        return self._on_store(lambda done: self._stepper.branches.drop_all(session_id, done))

    def switch_branch(self, session_id: str, holds: str, continues: str) -> Future[str]:
        """The session goes from branch `holds` (the one its KV holds) to branch `continues`: its KV is kept
        as `holds` and the one kept for `continues` becomes the session's (engine/kv/branches.py). The
        future holds the branch the session's KV holds then: `continues`, or `holds` when a KV was being
        read or written (the next turn of the session finishes the switch)."""
        return self.query(lambda engine: engine._stepper.branches.switch(session_id, holds, continues)[1])

    def calibrate(self) -> None:
        """Before start(): time a few forward passes (decode batches, a prefill) on this machine, so that
        admission predicts waits from its real speed from the first turn (seconds for large models)."""
        assert self._thread is None

        def run(num_decode: int, num_prefill: int) -> float:
            items = [ForwardItem(self.runner.new_kv(), [0], True) for _ in range(num_decode)]
            if num_prefill:
                items.append(ForwardItem(self.runner.new_kv(), [0] * num_prefill, True))
            started = time.perf_counter()
            self.runner.forward(items)
            return (time.perf_counter() - started) * 1000

        calibrate(self._admission.cost, run, self.config.max_batch_size)

    # ---- engine thread (through query) ----

    def stats_snapshot(self, with_buckets: bool = False) -> dict:
        """Engine and KV store statistics (with_buckets: histogram buckets too; not JSON-safe, for metrics)."""
        return engine_snapshot(self._stats, self._scheduler, self._admission, self._store, self.runner, with_buckets)

    def kv_placement(self, session_ids: list[str]) -> dict[str, tuple[str, int]]:
        """session id -> (tier "ram" | "disk" | "none", bytes it holds there)."""
        return {sid: (self._store.tier_of(sid), self._store.bytes_of(sid)) for sid in session_ids}

    # ---- the loop ----

    def _on_store(self, start: Callable[[Callable[[str], None]], None]) -> Future[str]:
        future: Future[str] = Future()
        self._inbox.put(lambda: start(lambda tier: future.done() or future.set_result(tier)))
        return future

    def _cancel(self, turn_id: int) -> None:
        for turn in list(self._scheduler.waiting) + self._scheduler.running:
            if turn.id == turn_id:
                turn.is_cancelled = True

    def _loop(self) -> None:
        next_expiry = 0.0
        sched = self._scheduler
        while not self._stopping:
            self.heartbeat = time.monotonic()
            try:
                # block only when nothing can run: waiting turns are then blocked on a restore or on RAM,
                # and a completion from the KV store's I/O thread wakes us through the inbox
                recheck = self._stepper.finished_since_schedule and sched.waiting
                self._drain_inbox(block=not sched.running and not recheck)
                self._wait_for_company()
                if sched.num_unfinished:
                    self._stepper.step()
            except Exception as exc:  # noqa: BLE001 - a bug must fail the turns at hand, not the server
                log.exception("engine step failed")
                self._stepper.fail_all(exc)
            if time.monotonic() > next_expiry:
                self._store.expire()
                next_expiry = time.monotonic() + _EXPIRE_EVERY_S
        self._stepper.stop_all()
        written = self._store.spill_all()
        log.info("engine stopped; %d sessions written to disk", written)

    def _wait_for_company(self) -> None:
        """An idle engine holds a new turn up to max_wait_ms so that turns arriving together share
        their prefill pass; a lone turn never waits longer than that."""
        sched = self._scheduler
        deadline = (sched.waiting[0].t_submit + self.config.max_wait_ms / 1000) if sched.waiting else 0.0
        while (not sched.running and 0 < len(sched.waiting) < self.config.max_batch_size
               and (remaining := deadline - time.perf_counter()) > 0):
            self._drain_inbox(block=True, timeout=remaining)

    def _drain_inbox(self, block: bool, timeout: float = _IDLE_WAKE_S) -> None:
        try:
            task: Callable[[], Any] = self._inbox.get(timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                task()
            except Exception:  # noqa: BLE001 - bookkeeping must not stop the engine
                log.exception("engine task failed")
            try:
                task = self._inbox.get_nowait()
            except queue.Empty:
                return
