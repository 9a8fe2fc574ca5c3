"""One session's place in the KV store: its buffers, state and pending requests. Engine thread only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.kv.session_kv import SessionKV

OnDone = Callable[[str], None]  # told the session's tier ("ram", "disk", "none") once a change is done


@dataclass(eq=False)
class Entry:
    kv: SessionKV
    state: str = "ram"  # ram | spilling | restoring
    is_in_use: bool = False
    is_dirty: bool = True  # RAM holds KV that the disk copy lacks
    restored_from: str = ""  # "disk" | "shared": read back from that tier since last used (the next turn reports it)
    reserved: int = 0  # bytes counted for a restore in flight
    after_io: str = ""  # "drop" | "keep": overrides the default outcome of the I/O in flight
    spill_when_idle: str = ""  # cause, set when asked to spill while in use
    waiters: list[OnDone] = field(default_factory=list)  # told the tier once a spill or drop is done
    last_used: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.reserved or self.kv.nbytes

    @property
    def is_idle(self) -> bool:
        return not self.is_in_use and self.state == "ram"
