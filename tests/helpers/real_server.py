"""Run `python -m chatserver serve` as a subprocess, the way a user does, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import queue
import sys
import threading
import time
from pathlib import Path

import websockets

from tests.helpers.paths import MODEL_CACHE, REPO


class RealServer:
    def __init__(self, data_dir: Path, model_cache: Path, *args: str):
        self.data_dir, self.model_cache, self.args = data_dir, model_cache, args
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()  # the server's stdout; None at its end

    def command(self) -> list[str]:
        return [sys.executable, "-m", "chatserver", "serve", "--port", "0", "--data-dir", str(self.data_dir),
                "--model-cache", str(self.model_cache), "--log-level", "WARNING", *self.args]

    def start(self, timeout: float = 300) -> RealServer:
        """Start the server and wait for its ready line; a server that is not ready after `timeout`
        seconds is killed and TimeoutError raised (stdout is read by a thread, so a silent server
        cannot hold this call past its deadline)."""
        self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ})
        threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"server exited with {self.proc.wait()} before it was ready")
            if line.startswith("chatserver ready on "):
                self.url = line.split()[-1]
                return self
        self.proc.kill()
        self.proc.wait()
        raise TimeoutError(f"server did not become ready within {timeout} s")

    def _read_stdout(self, stdout) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def serving(data_dir: Path, *args: str):
    """For module fixtures: `yield from serving(dir, *args)` starts the real server and stops it after."""
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
