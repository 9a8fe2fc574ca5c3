"""Run `python -m chatserver serve` as a subprocess, the way a user does, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parents[1]


class RealServer:
    def __init__(self, data_dir: Path, model_cache: Path, *args: str):
        self.data_dir, self.model_cache, self.args = data_dir, model_cache, args
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 300) -> RealServer:
        cmd = [sys.executable, "-m", "chatserver", "serve", "--port", "0", "--data-dir", str(self.data_dir),
               "--model-cache", str(self.model_cache), "--log-level", "WARNING", *self.args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {self.proc.wait()} before it was ready")
            if line.startswith("chatserver ready on "):
                self.url = line.split()[-1]
                return self
        raise TimeoutError("server did not become ready")

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc.stdout.close()
        return code


def serving(data_dir: Path, *args: str):
    """For module fixtures: `yield from serving(dir, *args)` starts the real server and stops it after."""
    from tests.conftest import MODEL_CACHE

    srv = RealServer(data_dir, MODEL_CACHE, *args).start()
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()


class WsChat:
    """A `websockets` client speaking docs/PROTOCOL.md."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def open(cls, url: str, **hello) -> tuple[WsChat, dict]:
        chat = cls(await websockets.connect(url, max_size=None))
        await chat.ws.send(json.dumps({"type": "hello", **hello}))
        return chat, json.loads(await chat.ws.recv())

    async def turn(self, content: str, **kw) -> tuple[str, dict]:
        await self.ws.send(json.dumps({"type": "user", "content": content, **kw}))
        text = ""
        while True:
            frame = json.loads(await self.ws.recv())
            if frame["type"] == "token":
                text += frame["text"]
            else:
                return text, frame

    async def close(self) -> None:
        await self.ws.close()
