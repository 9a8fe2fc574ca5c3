"""Checkpoints of a running turn's answer in the database, so that a process killed mid-answer (kill -9,
power loss) leaves the text streamed up to the last checkpoint: the next start stores it as the answer,
with finish_reason "interrupted" (TranscriptStore.close_unanswered). Documented in docs/PROTOCOL.md."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from storage import Lease, LeaseLost, StorageUnavailable, TranscriptStore

log = logging.getLogger(__name__)


class DraftCheckpoints:
    """The draft of one turn of a stored session (TranscriptStore.save_draft), written at most once per
    `interval_s` seconds (<= 0: never), the first one interval after this object is made (when the turn
    starts). Event loop only. A write runs as a task of its own, so the token stream never waits for the
    database; at most one write is in flight (a checkpoint due meanwhile waits for the next token after it
    has ended); a failed write is logged and changes nothing else."""

    def __init__(self, transcripts: TranscriptStore, session_id: str, parent_id: int | None, interval_s: float,
                 clock: Callable[[], float] = time.monotonic, lease: Lease | None = None):
        """parent_id: the user message the turn answers (None: nothing to checkpoint). lease: in a cluster,
        the lease the session is written under (a replica that lost it writes no draft)."""
        self._lease = lease
        self._transcripts = transcripts
        self._session_id = session_id
        self._parent_id = parent_id
        self._interval_s = interval_s
        self._clock = clock
        self._last_s = clock()  # when the last write started (or the turn started streaming)
        self._write: asyncio.Task | None = None
        self._is_closed = interval_s <= 0 or parent_id is None

    def offer(self, pieces: list[str]) -> None:
        """The answer so far is "".join(pieces) (joined only when a checkpoint is due). Never blocks."""
        if self._is_closed or (self._write is not None and not self._write.done()):
            return
        now = self._clock()
        if now - self._last_s < self._interval_s:
            return
        self._last_s = now
        self._write = asyncio.create_task(self._save("".join(pieces)))

    async def close(self) -> None:
        """No checkpoint after this one; returns when the write in flight, if any, has ended: the draft
        changes no more, so the answer stored next removes it for good."""
        self._is_closed = True
        if self._write is not None:
            await asyncio.shield(self._write)  # _save raises nothing

    async def _save(self, content: str) -> None:
        try:
            await self._transcripts.save_draft(self._session_id, self._parent_id, content, lease=self._lease)
        except (StorageUnavailable, LeaseLost) as exc:
            log.warning("could not checkpoint the answer of session %s: %s", self._session_id, exc)
        except Exception:
            log.exception("could not checkpoint the answer of session %s", self._session_id)
