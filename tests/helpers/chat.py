"""A test-side WebSocket chat over aiohttp's test client (docs/PROTOCOL.md)."""

from __future__ import annotations

import json


class Chat:
    """A test-side WebSocket chat: send frames, collect answers."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, **frame):
        await self.ws.send_str(json.dumps(frame))

    async def recv(self) -> dict:
        msg = await self.ws.receive(timeout=60)
        return json.loads(msg.data)

    async def hello(self, **kw) -> dict:
        await self.send(type="hello", **kw)
        return await self.recv()

    async def turn(self, content: str, **kw) -> tuple[str, dict]:
        """Send a user frame; return (streamed text, done or error frame)."""
        await self.send(type="user", content=content, **kw)
        text = ""
        while True:
            frame = await self.recv()
            if frame["type"] == "token":
                text += frame["text"]
            else:
                return text, frame


def bare(message: dict) -> dict:
    """A message of a session frame without its place in the tree (id, parent_id, siblings)."""
    return {k: v for k, v in message.items() if k in ("role", "content", "finish_reason")}
