"""Shared by the browser tests and the screenshot script: Debian's Chromium driven by Playwright,
and the real server on a fixed port so that it can be restarted under an open page."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.real_server import RealServer

# Playwright cannot download its own browsers here; scripts/setup.sh --test installs Debian's.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class RestartableServer:
    """`python -m chatserver serve` on one data dir; restart() brings it back on the same port."""

    def __init__(self, data_dir: Path, model_cache: Path, *args: str):
        self.data_dir, self.model_cache, self.args = data_dir, model_cache, args
        self.port: int | None = None
        self.proc: RealServer | None = None

    def start(self) -> RestartableServer:
        port_args = ("--port", str(self.port)) if self.port else ()  # argparse keeps the last --port
        self.proc = RealServer(self.data_dir, self.model_cache, *self.args, *port_args).start()
        self.port = int(self.proc.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> int:
        """Graceful stop (SIGTERM): open connections are closed, running turns stored, KV spilled to disk."""
        return self.proc.stop()

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None
