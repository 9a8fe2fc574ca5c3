"""The test harness itself: a server that never says it is ready fails its test in time."""

import sys
import time

import pytest

from tests.helpers.real_server import RealServer


class SilentServer(RealServer):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


def test_the_start_timeout_fires_while_the_server_prints_nothing(tmp_path):
    server = SilentServer(tmp_path, tmp_path)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        server.start(timeout=1.0)
    assert time.monotonic() - started < 10
    assert server.proc.poll() is not None  # killed, not left behind
