"""Reading a turn's frames (docs/PROTOCOL.md): token frames, then done or error, each with turn_id and seq."""

from __future__ import annotations

from collections.abc import Awaitable, Callable


async def read_turn(recv: Callable[[], Awaitable[dict]]) -> list[dict]:
    """Frames from `recv` up to and including the turn's done or error frame."""
    frames = []
    while True:
        frame = await recv()
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            return frames


def text_of(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")


def assert_one_turn_in_order(frames: list[dict]) -> None:
    """One turn's frames, seq 0, 1, 2... with no gap or repeat, ending with its done frame."""
    assert len({f["turn_id"] for f in frames}) == 1, frames
    assert [f["seq"] for f in frames] == list(range(len(frames))), [f["seq"] for f in frames]
    assert [f["type"] for f in frames[:-1]] == ["token"] * (len(frames) - 1) and frames[-1]["type"] == "done", frames
